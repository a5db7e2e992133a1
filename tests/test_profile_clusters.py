"""``cluster: {profile: ..., devices: N}`` counts GPUs instead of being silently ignored."""

import re

import pytest

from simulator.errors import InputError
from simulator.profiles import build_cluster
from simulator.yamlio import Section


def shape(**cluster):
    built = build_cluster(Section({"profile": "h100-sxm", **cluster}))
    return len(built.devices), len({d.node for d in built.devices})


@pytest.mark.parametrize(("devices", "expected"), [(1, (1, 1)), (4, (4, 1)), (8, (8, 1)), (16, (16, 2)), (64, (64, 8))])
def test_devices_with_a_profile_counts_gpus_in_whole_nodes_or_one_partial_node(devices, expected):
    assert shape(devices=devices) == expected


def test_nodes_and_gpus_per_node_still_shape_the_cluster():
    assert shape(nodes=2, gpus_per_node=4) == (8, 2)
    assert shape() == (8, 1)


@pytest.mark.parametrize(("cluster", "words"), [
    ({"devices": 12}, "not a whole number of h100-sxm nodes of 8 GPUs (use 8 or 16"),
    ({"devices": 8, "nodes": 1}, "either devices: or nodes:"),
    ({"gpus_per_node": 9}, "has 8 GPUs per node"),
])
def test_a_cluster_the_profile_cannot_build_is_refused_naming_the_field(cluster, words):
    with pytest.raises(InputError, match=re.escape(words)):
        build_cluster(Section({"profile": "h100-sxm", **cluster}))
