"""toycity: a deterministic procedural street renderer (numpy ray casting).

Every ``index`` is an independent static street scene drawn from ``np.random.default_rng([seed, index])``;
a pinhole camera ~1.5 m above the road drives down the street, ~1 m forward per frame offset, with small smooth
yaw/pitch/roll and lateral perturbations. For each requested frame offset the renderer returns RGB, exact metric
z-depth, labels, camera-facing unit normals (camera frame: x right, y down, z forward), 1-px label edges, the
intrinsics ``K`` and the pose ``cam_to_world``.

World frame: X right across the street, Y forward along the street, Z up; the road surface is the plane Z = 0
and the camera sits at Z = ``CAMERA_HEIGHT``. Pixel conventions follow ``mtlda.geometry``: pixel centres at
integer (u, v), ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

Styles share the geometry exactly and differ only in appearance: ``"flat"`` (one saturated colour per class,
mild shading), ``"tinted"`` (each object's own natural colour, mild shading, no texture), ``"synthetic"`` (the
textured style's materials as a game engine renders them: one ray per pixel, a fixed high sun, a cloudless sky,
no fog, no camera, vivid colours) and ``"textured"`` (procedural textures, per-object colours, low sun, fog,
colour shift, noise; each pixel averages 3x3 rays over its footprint, as a camera does, while depth, labels and
normals are those of the pixel centre in every style).

Modules by job: :mod:`~mtlda.data.toycity.scene` (street layout and conventions),
:mod:`~mtlda.data.toycity.raycast` (camera model and ray casting), :mod:`~mtlda.data.toycity.shading` (the four
styles) and :mod:`~mtlda.data.toycity.render` (:func:`render_sample`, :class:`Frame`).
"""

from mtlda.data.toycity.raycast import HORIZONTAL_FOV_DEG, camera_matrix
from mtlda.data.toycity.render import GENERATOR_VERSION, STYLES, Frame, render_sample
from mtlda.data.toycity.scene import CAMERA_HEIGHT, CITYSCAPES_LABEL_IDS, CLASS_NAMES, MAX_ABS_OFFSET, MAX_DEPTH

__all__ = ["Frame", "render_sample", "camera_matrix", "GENERATOR_VERSION", "STYLES", "CLASS_NAMES",
           "CITYSCAPES_LABEL_IDS", "CAMERA_HEIGHT", "MAX_DEPTH", "MAX_ABS_OFFSET", "HORIZONTAL_FOV_DEG"]
