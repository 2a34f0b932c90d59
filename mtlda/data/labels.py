"""Label tables of the supported data sets and the class sets (native id -> class index) the loaders use.

A :class:`ClassSet` maps a data set's *native* label ids (the values stored in its label files) to training class
indices 0..C-1; every other id becomes ``IGNORE_INDEX``. Class sets per data set:

Each loader class holds its data set's sets as ``class_sets`` (and ``default_class_set``); this module holds the
tables they are built from.

* Cityscapes (native = ``labelIds``; mmsegmentation's ``labelTrainIds`` files are read through
  :func:`cityscapes_train_id_set`): ``"19"`` (official trainIds), ``"16"`` (the Synthia-compatible set of the
  paper: 19 without terrain, truck and train), ``"7"`` (the official categories flat..vehicle), ``"8"`` (the
  VKITTI2 <-> Cityscapes set of the paper's Table 8) and ``"toycity"`` (the 9 classes toycity renders).
  Deviations from the official DenseMTL code in ``"8"``: Cityscapes *truck* (27) maps to *vehicle* like VKITTI2's
  Truck does (the official code ignores it); *wall* is ignored as in the official code (Table 8 lists
  wall -> vegetation, which we read as a typo: no other set merges a wall into vegetation).
* Synthia RAND-CITYSCAPES (native = the class channel of ``GT/LABELS``): ``"16"`` in the Cityscapes-16 order
  and ``"toycity"``.
* Virtual KITTI 2 (native = index of the colour in :data:`VKITTI2_CLASSES`): ``"14"`` (identity), ``"8"``
  (Table 8: Tree and Vegetation -> vegetation, Truck, Car and Van -> vehicle; Terrain, GuardRail, Misc ignored)
  and ``"toycity"``.
* NYUDv2 (native = the ``segmentation`` PNG value, 0 = void, v -> NYU40 class v - 1): ``"40"`` and ``"toycity"``.

The toycity sets read toycity scenes written in each format by :mod:`mtlda.data.toycity_export`, which stores
toycity class k as ``TOYCITY_NATIVE_IDS[format][k]``. VKITTI2 has no sidewalk or person class: toycity writes them
as Terrain and Misc, so they survive in ``"14"``/``"toycity"`` but are ignored by ``"8"`` (as the real mapping
ignores Terrain and Misc).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mtlda.constants import IGNORE_INDEX

Color = tuple[int, int, int]

# The official Cityscapes label table: (name, id, trainId, categoryId, color), ids 0..33.
# Copied from cityscapesScripts, cityscapesscripts/helpers/labels.py
# (https://github.com/mcordts/cityscapesScripts, MIT licence, Copyright (c) 2016 Marius Cordts et al.),
# so that the table is not a run-time dependency. trainId 255 = ignored in evaluation; categoryId 0 = void.
CITYSCAPES_LABELS: tuple[tuple[str, int, int, int, Color], ...] = (
    ("unlabeled", 0, 255, 0, (0, 0, 0)),
    ("ego vehicle", 1, 255, 0, (0, 0, 0)),
    ("rectification border", 2, 255, 0, (0, 0, 0)),
    ("out of roi", 3, 255, 0, (0, 0, 0)),
    ("static", 4, 255, 0, (0, 0, 0)),
    ("dynamic", 5, 255, 0, (111, 74, 0)),
    ("ground", 6, 255, 0, (81, 0, 81)),
    ("road", 7, 0, 1, (128, 64, 128)),
    ("sidewalk", 8, 1, 1, (244, 35, 232)),
    ("parking", 9, 255, 1, (250, 170, 160)),
    ("rail track", 10, 255, 1, (230, 150, 140)),
    ("building", 11, 2, 2, (70, 70, 70)),
    ("wall", 12, 3, 2, (102, 102, 156)),
    ("fence", 13, 4, 2, (190, 153, 153)),
    ("guard rail", 14, 255, 2, (180, 165, 180)),
    ("bridge", 15, 255, 2, (150, 100, 100)),
    ("tunnel", 16, 255, 2, (150, 120, 90)),
    ("pole", 17, 5, 3, (153, 153, 153)),
    ("polegroup", 18, 255, 3, (153, 153, 153)),
    ("traffic light", 19, 6, 3, (250, 170, 30)),
    ("traffic sign", 20, 7, 3, (220, 220, 0)),
    ("vegetation", 21, 8, 4, (107, 142, 35)),
    ("terrain", 22, 9, 4, (152, 251, 152)),
    ("sky", 23, 10, 5, (70, 130, 180)),
    ("person", 24, 11, 6, (220, 20, 60)),
    ("rider", 25, 12, 6, (255, 0, 0)),
    ("car", 26, 13, 7, (0, 0, 142)),
    ("truck", 27, 14, 7, (0, 0, 70)),
    ("bus", 28, 15, 7, (0, 60, 100)),
    ("caravan", 29, 255, 7, (0, 0, 90)),
    ("trailer", 30, 255, 7, (0, 0, 110)),
    ("train", 31, 16, 7, (0, 80, 100)),
    ("motorcycle", 32, 17, 7, (0, 0, 230)),
    ("bicycle", 33, 18, 7, (119, 11, 32)),
)
_CS_BY_NAME = {name: (label_id, color) for name, label_id, _, _, color in CITYSCAPES_LABELS}

# Synthia RAND-CITYSCAPES class ids (its README): 0 void .. 22 lanemarking.
SYNTHIA_CLASSES: tuple[str, ...] = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car", "traffic sign",
    "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work", "traffic light", "terrain", "rider",
    "truck", "bus", "train", "wall", "lanemarking",
)

# Virtual KITTI 2 classes in the order of the paper's 14-class set, with their classSegmentation colours (RGB).
VKITTI2_CLASSES: tuple[tuple[str, Color], ...] = (
    ("Terrain", (210, 0, 200)),
    ("Sky", (90, 200, 255)),
    ("Tree", (0, 199, 0)),
    ("Vegetation", (90, 240, 0)),
    ("Building", (140, 140, 140)),
    ("Road", (100, 60, 100)),
    ("GuardRail", (250, 100, 255)),
    ("TrafficSign", (255, 255, 0)),
    ("TrafficLight", (200, 200, 0)),
    ("Pole", (255, 130, 0)),
    ("Misc", (80, 80, 80)),
    ("Truck", (160, 60, 60)),
    ("Car", (255, 127, 80)),
    ("Van", (0, 139, 139)),
)

# The NYUDv2 40-class set (Gupta et al.); file value v > 0 is class v - 1.
NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)

TOYCITY_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky", "person", "car",
)

# Native id each format stores for toycity class k (see the module docstring).
TOYCITY_NATIVE_IDS: dict[str, tuple[int, ...]] = {
    "cityscapes": (7, 8, 11, 17, 20, 21, 23, 24, 26),
    "synthia": (3, 4, 2, 7, 9, 6, 1, 10, 8),
    # VKITTI2 class indices: Road, Terrain, Building, Pole, TrafficSign, Vegetation, Sky, Misc, Car.
    "vkitti2": (5, 0, 4, 9, 7, 3, 1, 10, 12),
    # NYUDv2 file values: floor, floor mat, wall, otherstructure, picture, otherprop, ceiling, person,
    # otherfurniture.
    "nyudv2": (2, 20, 1, 38, 11, 40, 22, 31, 39),
}


@dataclass(frozen=True)
class ClassSet:
    """Training classes of a loader: ``mapping`` native id -> class index, ``palette`` one RGB colour per class."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[Color, ...]
    mapping: dict[int, int]

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.class_names):
            raise ValueError(f"class set {self.name}: {len(self.palette)} colours for {len(self.class_names)} classes")
        bad = sorted(v for v in self.mapping.values() if not 0 <= v < len(self.class_names))
        if bad:
            raise ValueError(f"class set {self.name}: class indices {bad} outside 0..{len(self.class_names) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def lookup_table(self) -> np.ndarray:
        """(65536,) int64: class index of every native id 0..65535, ``IGNORE_INDEX`` where unmapped."""
        table = np.full(65536, IGNORE_INDEX, dtype=np.int64)
        for native, index in self.mapping.items():
            table[native] = index
        return table

    def map_native(self, native: np.ndarray) -> np.ndarray:
        """Class indices (H, W) int64 of native ids (H, W) (any unsigned integer array; ids >= 65536 ignored)."""
        if native.dtype.kind not in "ui":
            raise ValueError(f"native label ids must be integers, got dtype {native.dtype}")
        ids = native.astype(np.int64)
        inside = (ids >= 0) & (ids < 65536)
        return np.where(inside, self.lookup_table[np.clip(ids, 0, 65535)], IGNORE_INDEX)

    def palette_array(self) -> np.ndarray:
        """(C, 3) uint8 RGB colours."""
        return np.asarray(self.palette, dtype=np.uint8)


def _cityscapes_set(name: str, groups: list[tuple[str, Color, list[str]]]) -> ClassSet:
    """A Cityscapes class set from (class name, colour, Cityscapes label names merged into it)."""
    mapping = {_CS_BY_NAME[label][0]: index for index, (_, _, labels) in enumerate(groups) for label in labels}
    return ClassSet(name, tuple(g[0] for g in groups), tuple(g[1] for g in groups), mapping)


def _cs_single(names: list[str]) -> list[tuple[str, Color, list[str]]]:
    return [(n, _CS_BY_NAME[n][1], [n]) for n in names]


_CS19 = [name for name, _, train_id, _, _ in sorted(CITYSCAPES_LABELS, key=lambda r: r[2]) if train_id != 255]
_CS16 = [n for n in _CS19 if n not in ("terrain", "truck", "train")]
_CATEGORY_NAMES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
# Category colours: the colour of the category's most frequent class.
_CATEGORY_COLORS = ("road", "building", "pole", "vegetation", "sky", "person", "car")

_VK_TABLE8 = [
    ("road", ["road"]),
    ("building", ["building"]),
    ("pole", ["pole"]),
    ("traffic light", ["traffic light"]),
    ("traffic sign", ["traffic sign"]),
    ("vegetation", ["vegetation"]),
    ("sky", ["sky"]),
    ("vehicle", ["car", "truck", "bus"]),
]
_VK_TABLE8_VKITTI2 = (["Road"], ["Building"], ["Pole"], ["TrafficLight"], ["TrafficSign"], ["Tree", "Vegetation"],
                      ["Sky"], ["Truck", "Car", "Van"])

_TOYCITY_PALETTE = tuple(_CS_BY_NAME[n][1] for n in TOYCITY_CLASSES)


def _toycity_set(fmt: str) -> ClassSet:
    mapping = {native: k for k, native in enumerate(TOYCITY_NATIVE_IDS[fmt])}
    return ClassSet("toycity", TOYCITY_CLASSES, _TOYCITY_PALETTE, mapping)


def _voc_palette(n: int) -> tuple[Color, ...]:
    """n distinct colours by the PASCAL VOC bit-interleaving scheme, skipping black (index 0)."""
    colors = []
    for i in range(1, n + 1):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


_VK_INDEX = {name: i for i, (name, _) in enumerate(VKITTI2_CLASSES)}
_SYNTHIA_INDEX = {name: i for i, name in enumerate(SYNTHIA_CLASSES)}
# Synthia class of each Cityscapes-16 class (the paper's mapping, densemtl-notes 5.2).
_SYNTHIA_FOR_CS16 = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall", "fence": "fence",
    "pole": "pole", "traffic light": "traffic light", "traffic sign": "traffic sign", "vegetation": "vegetation",
    "sky": "sky", "person": "pedestrian", "rider": "rider", "car": "car", "bus": "bus",
    "motorcycle": "motorcycle", "bicycle": "bicycle",
}

# Class sets per data set (each loader class holds its own as ``class_sets``; see the module docstring).
CITYSCAPES_CLASS_SETS: dict[str, ClassSet] = {
    "19": _cityscapes_set("19", _cs_single(_CS19)),
    "16": _cityscapes_set("16", _cs_single(_CS16)),
    "7": _cityscapes_set(
        "7",
        [
            (cat, _CS_BY_NAME[color_of][1], [n for n, _, t, c, _ in CITYSCAPES_LABELS if c == i + 1 and t != 255])
            for i, (cat, color_of) in enumerate(zip(_CATEGORY_NAMES, _CATEGORY_COLORS))
        ],
    ),
    "8": _cityscapes_set("8", [(name, _CS_BY_NAME[labels[0]][1], labels) for name, labels in _VK_TABLE8]),
    "toycity": _toycity_set("cityscapes"),
}
SYNTHIA_CLASS_SETS: dict[str, ClassSet] = {
    "16": ClassSet(
        "16", tuple(_CS16), tuple(_CS_BY_NAME[n][1] for n in _CS16),
        {_SYNTHIA_INDEX[_SYNTHIA_FOR_CS16[n]]: i for i, n in enumerate(_CS16)},
    ),
    "toycity": _toycity_set("synthia"),
}
VKITTI2_CLASS_SETS: dict[str, ClassSet] = {
    "14": ClassSet(
        "14", tuple(n for n, _ in VKITTI2_CLASSES), tuple(c for _, c in VKITTI2_CLASSES),
        {i: i for i in range(len(VKITTI2_CLASSES))},
    ),
    "8": ClassSet(
        "8", tuple(n for n, _ in _VK_TABLE8), tuple(_CS_BY_NAME[labels[0]][1] for _, labels in _VK_TABLE8),
        {_VK_INDEX[vk]: i for i, group in enumerate(_VK_TABLE8_VKITTI2) for vk in group},
    ),
    "toycity": _toycity_set("vkitti2"),
}
NYUDV2_CLASS_SETS: dict[str, ClassSet] = {
    "40": ClassSet("40", NYU40_CLASSES, _voc_palette(40), {v: v - 1 for v in range(1, 41)}),
    "toycity": _toycity_set("nyudv2"),
}

# Values a label file may hold (the ids of each data set's official label table; loaders reject other values).
# Cityscapes labelIds: 0..33 (cityscapesScripts never draws the id -1 of "license plate" into a label image);
# mmsegmentation's labelTrainIds: 0..18 and 255.
CITYSCAPES_LABELIDS_VALUES = frozenset(label_id for _, label_id, _, _, _ in CITYSCAPES_LABELS)
CITYSCAPES_TRAINIDS_VALUES = frozenset(train_id for _, _, train_id, _, _ in CITYSCAPES_LABELS)
SYNTHIA_LABEL_VALUES = frozenset(range(len(SYNTHIA_CLASSES)))  # 0 void .. 22 lanemarking
NYUDV2_LABEL_VALUES = frozenset(range(len(NYU40_CLASSES) + 1))  # 0 void, 1..40


def unknown_label_values(native: np.ndarray, known: frozenset[int], first: int = 8) -> list[int]:
    """The first ``first`` distinct values of a label map (H, W) (unsigned integers) that are not in ``known``."""
    if native.dtype.kind != "u":
        raise ValueError(f"label maps hold unsigned integers, got dtype {native.dtype}")
    present = np.flatnonzero(np.bincount(native.ravel(), minlength=1))
    return [int(v) for v in present if int(v) not in known][:first]


def cityscapes_train_id_set(classes: ClassSet) -> ClassSet:
    """``classes`` (keyed by Cityscapes labelIds) keyed by trainIds instead, for ``*_labelTrainIds.png`` files.

    Possible for every set whose classes are made of labels that have a trainId (all built-in sets); a set that
    maps a label without one (e.g. parking) is a ValueError naming those labels.
    """
    train_of = {label_id: (name, train_id) for name, label_id, train_id, _, _ in CITYSCAPES_LABELS}
    without = sorted(train_of[i][0] for i in classes.mapping if train_of[i][1] == IGNORE_INDEX)
    if without:
        raise ValueError(f"class set {classes.name} uses Cityscapes labels without a trainId ({', '.join(without)}); "
                         "it needs the *_gtFine_labelIds.png files of gtFine_trainvaltest.zip")
    mapping = {train_of[label_id][1]: index for label_id, index in classes.mapping.items()}
    return ClassSet(classes.name, classes.class_names, classes.palette, mapping)


def decode_vkitti2_colors(rgb: np.ndarray) -> np.ndarray:
    """VKITTI2 class indices (H, W) int64 of a classSegmentation image (H, W, 3) uint8 RGB; 255 where the colour
    is not in :data:`VKITTI2_CLASSES` (e.g. Undefined (0, 0, 0))."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for _, (r, g, b) in VKITTI2_CLASSES], dtype=np.int64)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, packed), 0, len(keys) - 1)
    return np.where(sorted_keys[pos] == packed, order[pos], 255).astype(np.int64)


def encode_vkitti2_colors(native: np.ndarray) -> np.ndarray:
    """The classSegmentation image (H, W, 3) uint8 RGB of VKITTI2 class indices (H, W); other values -> black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(VKITTI2_CLASSES)] = [c for _, c in VKITTI2_CLASSES]
    return palette[np.clip(native, 0, 255).astype(np.int64)]
