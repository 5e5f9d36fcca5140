"""Device profiles: every shipped TOML loads, is sourced and sane; malformed files are refused
with a message that names the file and the key; profiles round-trip through dicts and JSON."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest

from edgemfm.errors import ProfileError, UnknownDeviceError
from edgemfm.profiles import (
    COST_FIGURES,
    FIGURES,
    FORMATS,
    WEIGHT_BITS,
    DeviceProfile,
    list_profiles,
    load_profile,
    read_profile,
)
from edgemfm.records import from_dict, to_dict

PROFILE_DIR = Path(str(resources.files("edgemfm.device_profiles")))
SHIPPED = sorted(PROFILE_DIR.glob("*.toml"))
# The devices the SDK promises (README, samples); more may be added, none may disappear.
EXPECTED = {
    "host-x86-64-avx2": ("host", "x86"),
    "jetson-orin-nano-8gb": ("jetson", "orin-nano"),
    "jetson-agx-orin-64gb": ("agx-orin",),
    "raspberry-pi-5-8gb": ("pi5", "rpi"),
    "snapdragon-8-gen-3": ("android", "sd8g3"),
    "pixel-8-tensor-g3": ("pixel8",),
}
# The copy that the malformed-file tests edit.
BASE = PROFILE_DIR / "raspberry-pi-5-8gb.toml"


def by_name(p: DeviceProfile) -> str:
    return p.name


# --- every shipped profile ---------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_loads_and_is_named_after_its_file(path):
    profile = read_profile(path)
    assert profile.name == path.stem


def test_expected_devices_are_shipped_with_their_aliases():
    shipped = {p.name: p.aliases for p in list_profiles()}
    for name, aliases in EXPECTED.items():
        assert shipped.get(name) == aliases, name


def test_names_and_aliases_are_unique_and_each_resolves():
    keys = [k for p in list_profiles() for k in (p.name, *p.aliases)]
    assert len(keys) == len(set(keys))
    for p in list_profiles():
        for key in (p.name, *p.aliases):
            assert load_profile(key) == p, key


@pytest.mark.parametrize("profile", list_profiles(), ids=by_name)
def test_every_figure_has_a_source_and_sources_name_real_fields(profile):
    for figure in FIGURES:
        assert profile.sources.get(figure, "").strip(), f"{profile.name}: {figure} has no source"
    # A misspelt source key would leave its figure unsourced without anyone noticing.
    known = {f.name for f in fields(DeviceProfile)} | set(COST_FIGURES)
    assert set(profile.sources) <= known, set(profile.sources) - known


@pytest.mark.parametrize("profile", list_profiles(), ids=by_name)
def test_figures_are_consistent(profile):
    assert 0 < profile.default_memory_budget_mb <= profile.usable_memory_gb * 1024
    assert 0 < profile.usable_memory_gb <= profile.memory_gb
    # Lower precision is never slower at peak: catches a figure typed in the wrong unit.
    assert profile.peak_fp32_gflops <= profile.peak_fp16_gflops <= profile.peak_int8_gops
    assert profile.formats and set(profile.formats) <= set(FORMATS)
    assert profile.weight_bits and set(profile.weight_bits) <= set(WEIGHT_BITS)
    if 4 in profile.weight_bits:
        assert profile.group_sizes, "int4 needs at least one group size"
    assert all(g > 0 and g & (g - 1) == 0 for g in profile.group_sizes), profile.group_sizes
    assert profile.execution_providers[-1] == "CPUExecutionProvider"  # the fallback that always exists
    assert len(set(profile.execution_providers)) == len(profile.execution_providers)


@pytest.mark.parametrize("profile", list_profiles(), ids=by_name)
def test_streaming_is_sized_for_the_device(profile):
    s = profile.streaming
    assert 0 < s.audio_window_s <= 30.0  # Whisper-style encoders take at most 30 s
    assert s.image_tile > 0 and (s.image_tile % 14 == 0 or s.image_tile % 16 == 0)  # ViT patches
    assert 0 <= s.sink_tokens < s.prefill_chunk <= s.max_seq_len


# --- lookups -----------------------------------------------------------------------------


def test_unknown_device_lists_known_names():
    with pytest.raises(UnknownDeviceError) as err:
        load_profile("pi9")
    message = str(err.value)
    assert "'pi9'" in message
    for p in list_profiles():
        for key in (p.name, *p.aliases):
            assert key in message


def test_load_profile_accepts_a_path(tmp_path):
    copy = tmp_path / "my-pi.toml"
    copy.write_text(BASE.read_text())
    assert load_profile(str(copy)) == load_profile("pi5")


def test_missing_file_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="nowhere.toml"):
        read_profile(tmp_path / "nowhere.toml")


# --- malformed files ---------------------------------------------------------------------


def _top(key: str, value: str) -> tuple[str, str]:
    """A substitution of the top-level `key` line (not the [sources] line of the same name)."""
    return rf"^{key} = (?!\").*$", f"{key} = {value}" if value else ""


BAD = {
    # case: (pattern, replacement, key the message must name)
    "unknown key": (r"^version = 1$", "version = 1\nbogus_key = 3", "bogus_key"),
    "missing key": (*_top("cpu_cores", ""), "cpu_cores"),
    "wrong type (str for float)": (*_top("memory_gb", '"8 GB"'), "memory_gb"),
    "wrong type (bool for int)": (*_top("cpu_cores", "true"), "cpu_cores"),
    "wrong type (str for list)": (*_top("isa", '"neon"'), "isa"),
    "wrong type in a table": (r"^image_tile = .*$", "image_tile = 22.4", "image_tile"),
    "unknown key in a table": (r"^sink_tokens = 4$", "sink_tokens = 4\nstride = 2", "stride"),
    "bad format": (*_top("formats", '["onnx", "tflite"]'), "formats"),
    "bad weight bits": (*_top("weight_bits", "[3, 8]"), "weight_bits"),
    "usable > total memory": (*_top("usable_memory_gb", "9.5"), "usable_memory_gb"),
    "budget > usable memory": (*_top("default_memory_budget_mb", "7000"), "default_memory_budget_mb"),
    "non-positive figure": (*_top("bandwidth_gbps", "0.0"), "bandwidth_gbps"),
    "missing source": (r'^bandwidth_gbps = ".*"$', "", "bandwidth_gbps"),
    "empty source": (r'^peak_int8_gops = ".*"$', 'peak_int8_gops = "  "', "peak_int8_gops"),
    "no providers": (*_top("execution_providers", "[]"), "execution_providers"),
    "other version": (r"^version = 1$", "version = 2", "version"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_malformed_profile_names_file_and_key(case, tmp_path):
    pattern, replacement, key = BAD[case]
    text, n = re.subn(pattern, replacement, BASE.read_text(), count=1, flags=re.M)
    assert n == 1, f"the edit for {case!r} matched nothing: the base profile changed"
    bad = tmp_path / "bad-device.toml"
    bad.write_text(text)
    with pytest.raises(ProfileError) as err:
        read_profile(bad)
    named = str(err.value).split("; known:")[0]  # the list of known keys names every key
    assert "bad-device.toml" in named
    assert key in named


def test_invalid_toml_is_a_profile_error(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text(BASE.read_text().replace('name = "raspberry-pi-5-8gb"', "name = raspberry"))
    with pytest.raises(ProfileError, match="broken.toml: not valid TOML"):
        read_profile(bad)


def test_empty_formats_message_shows_the_empty_list(tmp_path):
    bad = tmp_path / "bad-device.toml"
    bad.write_text(re.sub(*_top("formats", "[]"), BASE.read_text(), count=1, flags=re.M))
    with pytest.raises(ProfileError, match=r"formats \[\] not in"):
        read_profile(bad)


# --- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list_profiles(), ids=by_name)
def test_round_trip_through_dict_and_json(profile):
    as_dict = to_dict(profile)
    assert from_dict(DeviceProfile, as_dict) == profile
    assert from_dict(DeviceProfile, json.loads(json.dumps(as_dict))) == profile
