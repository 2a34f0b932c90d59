"""Label tables and class sets: checked against the official tables and against each other."""

import numpy as np
import pytest

from mtlda.constants import IGNORE_INDEX
from mtlda.data import toycity
from mtlda.data.catalog import dataset_class, dataset_names
from mtlda.data.labels import (
    CITYSCAPES_LABELS,
    SYNTHIA_CLASSES,
    TOYCITY_CLASSES,
    TOYCITY_NATIVE_IDS,
    VKITTI2_CLASSES,
    decode_vkitti2_colors,
    encode_vkitti2_colors,
)


def class_set(dataset: str, name: str):
    return dataset_class(dataset).class_set(name)


def test_cityscapes_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    official = {l.id: (l.name, l.trainId, l.categoryId, l.color) for l in labels if l.id >= 0}
    ours = {i: (name, t, c, color) for name, i, t, c, color in CITYSCAPES_LABELS}
    assert ours == official


def test_cityscapes19_is_the_official_train_id_mapping():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    cs19 = class_set("cityscapes", "19")
    native = np.arange(34, dtype=np.uint8)
    expected = np.array([next(l.trainId for l in labels if l.id == i) for i in range(34)])
    assert (cs19.map_native(native) == expected).all()
    assert cs19.class_names[13] == "car" and cs19.num_classes == 19


def test_cityscapes16_drops_terrain_truck_train_and_keeps_order():
    cs16, cs19 = class_set("cityscapes", "16"), class_set("cityscapes", "19")
    assert cs16.num_classes == 16
    assert [n for n in cs19.class_names if n not in ("terrain", "truck", "train")] == list(cs16.class_names)
    for name, label_id, *_ in CITYSCAPES_LABELS:
        mapped = int(cs16.map_native(np.array([label_id], dtype=np.uint8))[0])
        if name in cs16.class_names:
            assert cs16.class_names[mapped] == name
        else:
            assert mapped == IGNORE_INDEX


def test_synthia16_names_match_cityscapes16():
    syn16, cs16 = class_set("synthia", "16"), class_set("cityscapes", "16")
    assert syn16.class_names == cs16.class_names and syn16.palette == cs16.palette
    renamed = {"pedestrian": "person"}
    for native, index in syn16.mapping.items():
        assert renamed.get(SYNTHIA_CLASSES[native], SYNTHIA_CLASSES[native]) == cs16.class_names[index]


def test_vk_cs_8_classes_share_names_and_merge_as_table8():
    cs8, vk8 = class_set("cityscapes", "8"), class_set("vkitti2", "8")
    assert cs8.class_names == vk8.class_names
    vehicle = cs8.class_names.index("vehicle")
    cs_id = {name: i for name, i, *_ in CITYSCAPES_LABELS}
    for name in ("car", "truck", "bus"):  # truck -> vehicle: our deliberate fix of the official code
        assert cs8.mapping[cs_id[name]] == vehicle
    for name in ("sidewalk", "wall", "person", "rider", "motorcycle", "bicycle"):
        assert cs_id[name] not in cs8.mapping
    vk = {name: i for i, (name, _) in enumerate(VKITTI2_CLASSES)}
    assert vk8.mapping[vk["Tree"]] == vk8.mapping[vk["Vegetation"]] == vk8.class_names.index("vegetation")
    assert {vk8.mapping[vk[n]] for n in ("Truck", "Car", "Van")} == {vehicle}
    assert all(vk[n] not in vk8.mapping for n in ("Terrain", "GuardRail", "Misc"))


def test_cityscapes7_categories():
    cs7 = class_set("cityscapes", "7")
    for name, label_id, train_id, category, _ in CITYSCAPES_LABELS:
        mapped = int(cs7.map_native(np.array([label_id]))[0])
        assert mapped == (category - 1 if train_id != 255 else IGNORE_INDEX), name


@pytest.mark.parametrize("fmt", sorted(TOYCITY_NATIVE_IDS))
def test_every_toycity_class_survives_each_format(fmt):
    native = np.array(TOYCITY_NATIVE_IDS[fmt])
    assert (class_set(fmt, "toycity").map_native(native) == np.arange(len(TOYCITY_CLASSES))).all()
    assert len(set(native.tolist())) == len(TOYCITY_CLASSES)


def test_toycity_tables_agree_with_the_renderer():
    assert tuple(toycity.CLASS_NAMES) == TOYCITY_CLASSES
    assert tuple(toycity.CITYSCAPES_LABEL_IDS) == TOYCITY_NATIVE_IDS["cityscapes"]


def test_toycity_through_real_mappings_keeps_its_names():
    """Toycity classes written in a format and read with that format's real class set keep their meaning."""
    for fmt, real in (("cityscapes", "19"), ("synthia", "16")):
        mapped = class_set(fmt, real).map_native(np.array(TOYCITY_NATIVE_IDS[fmt]))
        names = [class_set(fmt, real).class_names[i] for i in mapped]
        assert names == list(TOYCITY_CLASSES)


def test_unmapped_and_ignore_ids_become_ignore_index():
    cs19 = class_set("cityscapes", "19")
    out = cs19.map_native(np.array([[0, 255], [7, 34]], dtype=np.uint8))
    assert out.tolist() == [[IGNORE_INDEX, IGNORE_INDEX], [0, IGNORE_INDEX]]
    assert out.dtype == np.int64


def test_vkitti2_colour_round_trip_and_unknown_colours():
    native = np.arange(len(VKITTI2_CLASSES)).reshape(2, 7)
    assert (decode_vkitti2_colors(encode_vkitti2_colors(native)) == native).all()
    odd = np.array([[[0, 0, 0], [1, 2, 3]]], dtype=np.uint8)
    assert (decode_vkitti2_colors(odd) == 255).all()
    assert (class_set("vkitti2", "14").map_native(decode_vkitti2_colors(odd)) == IGNORE_INDEX).all()


def test_palettes_have_one_distinct_colour_per_class():
    for fmt in dataset_names():
        for name, cs in dataset_class(fmt).class_sets.items():
            palette = cs.palette_array()
            assert palette.shape == (cs.num_classes, 3) and palette.dtype == np.uint8
    nyu = class_set("nyudv2", "40").palette_array()
    assert len({tuple(c) for c in nyu}) == 40


def test_unknown_class_set_names_the_choices():
    with pytest.raises(ValueError, match="choose data.classes from"):
        class_set("cityscapes", "13")
    with pytest.raises(ValueError, match="unknown data set"):
        class_set("kitti", "19")
