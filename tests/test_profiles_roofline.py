"""Roofline figures in hardware profiles: each with a source, efficiencies at most 1, kernels known."""

from __future__ import annotations

import pytest
import yaml

from simulator.errors import InputError
from simulator.profiles import load_profile, profile_dir


def write(tmp_path, **device_extra):
    doc = yaml.safe_load((profile_dir() / "h100-sxm.yaml").read_text())
    doc["device"].update(device_extra)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_bundled_profiles_give_every_rate_the_cost_model_uses():
    h100 = load_profile("h100-sxm")
    assert h100.rates["hbm"] == pytest.approx(3350e9 * 0.75)
    assert h100.rates["gemm.weight"] == pytest.approx(989.4e12 * 0.70)
    assert h100.rates["attention.cudnn"] == pytest.approx(989.4e12 * 0.536)
    assert h100.rates["launch"] == pytest.approx(1e5)
    assert all(load_profile(name).rates["hbm"] > 0 for name in ("a100-80gb", "h800-sxm"))


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"hbm_efficiency": {"value": 1.2, "source": "x"}}, "device.hbm_efficiency.value", "at most 1"),
        ({"memory_bandwidth_GBps": {"value": 3000}}, "device.memory_bandwidth_GBps.source", "source"),
        ({"attention_efficiency": {"flash-4": {"value": 0.5, "source": "x"}}}, "device.attention_efficiency", "flash-4"),
    ],
)
def test_a_bad_roofline_figure_names_the_file_and_field(tmp_path, extra, field, words):
    path = write(tmp_path, **extra)
    with pytest.raises(InputError) as info:
        load_profile(str(path))
    assert info.value.file == str(path)
    assert info.value.field.startswith(field) and words in str(info.value)
