"""Device profiles: the shipped files load, the peak-rate arithmetic, and every validation error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgecompress.devices import (
    Budgets,
    Cluster,
    DeviceProfile,
    Memory,
    Runtime,
    Soc,
    _display_path,
    get_profile,
    list_profiles,
    load_profile,
)
from edgecompress.errors import UserError
from edgecompress.paths import device_profiles_dir

SHIPPED = ["a55-lowend", "galaxy-s24", "iphone16pro", "iphone17pro", "pixel4", "pixel6", "pixel7", "rpi4", "rpi5"]

VALID = """\
name = "{name}"
display_name = "Test Phone"
kind = "phone"
os = "android"
recipe = "default"
artifacts = ["onnx", "ort"]

[soc]
name = "Test SoC"
isa = "armv8.2-a"
features = ["neon", "dotprod"]
source = "https://example.com/soc"

[[soc.clusters]]
core = "Cortex-X1"
count = 2
max_ghz = 3.0
fp32_flops_per_cycle = 32
int8_ops_per_cycle = 128
source = "https://example.com/x1"
derivation = "4x128-bit pipes"

[[soc.clusters]]
core = "Cortex-A55"
count = 4
max_ghz = 2.0
fp32_flops_per_cycle = 8
int8_ops_per_cycle = 32
source = "https://example.com/a55"

[memory]
ram_gb = 8
type = "LPDDR5"
bandwidth_gbps = 51.2
source = "https://example.com/mem"

[runtime]
threads = 2
seq_len = 128
batch = 1
dynamic_shapes = false

[budgets]
latency_p90_ms = 40.0
peak_memory_mb = 300.0
artifact_size_mb = 100.0
accuracy_drop_points = 1.0
"""


def write(tmp_path: Path, text: str, name: str = "testphone") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.format(name=name) if "{name}" in text else text)
    return path


def edited(old: str, new: str) -> str:
    """The valid profile with exactly one line changed, so each test isolates one mistake."""
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_profile(path)
    assert info.value.exit_code == 2
    return str(info.value)


# --- shipped profiles ----------------------------------------------------------------------------


def test_every_shipped_profile_loads_and_is_listed():
    profiles = list_profiles()
    assert [p.name for p in profiles] == SHIPPED
    for profile in profiles:
        assert get_profile(profile.name) == profile


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_cite_sources(name):
    """Facts are only trustworthy with a source; derived per-cycle rates must say how."""
    profile = get_profile(name)
    assert profile.soc.source.startswith("https://")
    assert profile.memory.source.startswith("https://")
    for cluster in profile.soc.clusters:
        assert cluster.source.startswith("https://")
        assert cluster.derivation


def test_flagship_budgets_fit_a_float_minilm():
    """A float MiniLM-L6 (~91 MB of fp32 weights) must fit the flagship phones without compression."""
    for name in ("pixel7", "pixel6", "galaxy-s24"):
        budgets = get_profile(name).budgets
        assert budgets.artifact_size_mb > 91 and budgets.peak_memory_mb > 2 * 91


def test_required_runtime_shapes():
    rpi4 = get_profile("rpi4").runtime
    assert (rpi4.dynamic_shapes, rpi4.seq_len) == (False, 128)
    assert any(p.runtime.seq_len == 64 for p in list_profiles())


def test_to_dict_is_json_and_mirrors_the_toml():
    profile = get_profile("pixel7")
    data = profile.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["soc"]["features"] == ["neon", "fp16", "dotprod"]
    assert data["soc"]["clusters"][0]["core"] == "Cortex-X1"
    assert data["budgets"]["latency_p90_ms"] == 40.0


# --- peak ops ------------------------------------------------------------------------------------


def hand_built(threads: int = 2) -> DeviceProfile:
    """Slow cores listed first, to check that the fastest are used first regardless of order."""
    little = Cluster("little", 4, 2.0, 8, 32, "s")
    big = Cluster("big", 2, 3.0, 32, 128, "s")
    return DeviceProfile(
        name="hand",
        display_name="Hand",
        kind="phone",
        os="android",
        recipe="default",
        artifacts=("onnx",),
        soc=Soc("soc", "armv8.2-a", ("neon",), (little, big), "s"),
        memory=Memory(8, "LPDDR5", 51.2, "s"),
        runtime=Runtime(threads, 128, 1, False),
        budgets=Budgets(40, 300, 100, 1),
    )


@pytest.mark.parametrize(
    "dtype, threads, expected",
    [
        ("fp32", 1, 3.0e9 * 32),
        ("fp32", 2, 2 * 3.0e9 * 32),
        ("fp32", 3, 2 * 3.0e9 * 32 + 2.0e9 * 8),
        ("fp32", 6, 2 * 3.0e9 * 32 + 4 * 2.0e9 * 8),
        ("fp32", 64, 2 * 3.0e9 * 32 + 4 * 2.0e9 * 8),
        ("int8", 3, 2 * 3.0e9 * 128 + 2.0e9 * 32),
    ],
)
def test_peak_ops_uses_fastest_cores_first_and_caps_threads(dtype, threads, expected):
    assert hand_built().peak_ops_per_second(dtype, threads) == pytest.approx(expected)


def test_peak_ops_on_a_shipped_profile():
    # Pixel 7, two threads: both Cortex-X1 cores at 2.85 GHz, 32 FLOP/cycle each.
    assert get_profile("pixel7").peak_ops_per_second("fp32", 2) == pytest.approx(2 * 2.85e9 * 32)


@pytest.mark.parametrize("dtype, threads", [("fp16", 1), ("fp32", 0)])
def test_peak_ops_rejects_bad_arguments(dtype, threads):
    with pytest.raises(ValueError):
        hand_built().peak_ops_per_second(dtype, threads)


# --- lookup --------------------------------------------------------------------------------------


def test_unknown_device_lists_known_ones():
    with pytest.raises(UserError) as info:
        get_profile("pixel77")
    assert str(info.value).split("; hint: ")[0] == (
        "Unknown device 'pixel77'. Known: a55-lowend, galaxy-s24, iphone16pro, iphone17pro, pixel4, pixel6, pixel7, "
        "rpi4, rpi5"
    )
    assert "hint: to add a device" in str(info.value)


def test_custom_profile_by_path(tmp_path):
    path = write(tmp_path, VALID, name="my-phone")
    for argument in (str(path), path):
        profile = get_profile(argument)
        assert profile.name == "my-phone"
        assert profile.soc.clusters[1].derivation is None


def test_missing_custom_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(UserError, match=re.escape(f"{path}: no such device profile file")):
        get_profile(str(path))


def test_shipped_files_are_named_as_in_the_repository():
    """Errors in packaged profiles name `device_profiles/<file>`, not an install path."""
    assert _display_path(device_profiles_dir() / "pixel7.toml") == "device_profiles/pixel7.toml"


# --- validation errors ---------------------------------------------------------------------------


def test_negative_budget(tmp_path):
    message = error_for(tmp_path, edited("latency_p90_ms = 40.0", "latency_p90_ms = -3"))
    assert message == (
        f"{tmp_path / 'testphone.toml'}: field 'budgets.latency_p90_ms' must be a positive number, got -3"
    )


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("ram_gb = 8", "ram_gb = 0", "field 'memory.ram_gb' must be a positive number, got 0"),
        ("max_ghz = 2.0", "max_ghz = -2.0", "field 'soc.clusters[1].max_ghz' must be a positive number, got -2.0"),
        (
            "bandwidth_gbps = 51.2",
            "bandwidth_gbps = inf",
            "field 'memory.bandwidth_gbps' must be a positive number, got inf",
        ),
        ("threads = 2", "threads = 0", "field 'runtime.threads' must be a positive integer, got 0"),
    ],
)
def test_non_positive_numbers(tmp_path, old, new, expected):
    assert error_for(tmp_path, edited(old, new)).endswith(expected)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("seq_len = 128", 'seq_len = "128"', "field 'runtime.seq_len' must be a positive integer, got \"128\""),
        ("count = 2", "count = 2.0", "field 'soc.clusters[0].count' must be a positive integer, got 2.0"),
        ("batch = 1", "batch = true", "field 'runtime.batch' must be a positive integer, got true"),
        ("dynamic_shapes = false", "dynamic_shapes = 0", "field 'runtime.dynamic_shapes' must be true or false, got 0"),
        ('display_name = "Test Phone"', "display_name = 7", "field 'display_name' must be a non-empty string, got 7"),
        (
            'artifacts = ["onnx", "ort"]',
            'artifacts = "onnx"',
            "field 'artifacts' must be a non-empty list of strings, got \"onnx\"",
        ),
        (
            'artifacts = ["onnx", "ort"]',
            "artifacts = []",
            "field 'artifacts' must be a non-empty list of strings, got []",
        ),
        ('kind = "phone"', 'kind = "tablet"', "field 'kind' must be one of phone, board, got \"tablet\""),
        ('os = "android"', 'os = "symbian"', "field 'os' must be one of android, ios, linux, got \"symbian\""),
        (
            'isa = "armv8.2-a"',
            'isa = "mips32"',
            "field 'soc.isa' must be an Arm A-profile ISA such as \"armv8.2-a\" (or, for a host, an x86-64 level "
            'such as "x86-64-v4"), got "mips32"',
        ),
        (
            'recipe = "default"',
            'recipe = "../evil"',
            "field 'recipe' must be a lowercase name of letters, digits, '-' and '_', got \"../evil\"",
        ),
    ],
)
def test_wrong_types(tmp_path, old, new, expected):
    assert error_for(tmp_path, edited(old, new)).endswith(expected)


@pytest.mark.parametrize(
    "old, expected",
    [
        ("accuracy_drop_points = 1.0\n", "field 'budgets.accuracy_drop_points' is missing; expected a positive number"),
        ('core = "Cortex-A55"\n', "field 'soc.clusters[1].core' is missing; expected a non-empty string"),
        ('display_name = "Test Phone"\n', "field 'display_name' is missing; expected a non-empty string"),
    ],
)
def test_missing_fields(tmp_path, old, expected):
    assert error_for(tmp_path, edited(old, "")).endswith(expected)


def test_missing_table(tmp_path):
    text = VALID[: VALID.index("[budgets]")]
    assert error_for(tmp_path, text).endswith("field 'budgets' is missing; expected a table")


def test_table_of_wrong_type(tmp_path):
    start, end = VALID.index("[runtime]"), VALID.index("[budgets]")
    text = "runtime = 3\n" + VALID[:start] + VALID[end:]
    assert error_for(tmp_path, text).endswith("field 'runtime' must be a table, got 3")


def test_unknown_key_lists_known_ones_and_suggests(tmp_path):
    message = error_for(tmp_path, edited("latency_p90_ms = 40.0", "latency_ms = 40.0"))
    assert message == (
        f"{tmp_path / 'testphone.toml'}: unknown field 'budgets.latency_ms'. "
        "Known: accuracy_drop_points, artifact_size_mb, latency_applies_to, latency_p90_ms, "
        "peak_memory_mb; "
        "hint: did you mean 'latency_p90_ms'?"
    )


def test_unknown_key_in_a_cluster(tmp_path):
    message = error_for(tmp_path, edited('core = "Cortex-X1"', 'core = "Cortex-X1"\nsmt = 2'))
    assert "unknown field 'soc.clusters[0].smt'. Known: core, count, derivation," in message


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            'features = ["neon", "dotprod"]',
            'features = ["neon", "dotprd"]',
            "field 'soc.features[1]' must be one of neon, fp16, dotprod, i8mm, bf16, sve, sve2, sme, avx2, fma, "
            'avx512f, avx512-vnni, got "dotprd"',
        ),
        (
            'features = ["neon", "dotprod"]',
            'features = ["neon", "neon"]',
            "field 'soc.features' lists \"neon\" more than once",
        ),
        (
            'artifacts = ["onnx", "ort"]',
            'artifacts = ["onnx", "tflite", "coreml"]',
            "field 'artifacts[2]' must be one of onnx, ort, tflite, got \"coreml\"",
        ),
    ],
)
def test_unknown_features_and_artifacts(tmp_path, old, new, expected):
    assert error_for(tmp_path, edited(old, new)).endswith(expected)


def test_name_must_match_file_stem(tmp_path):
    path = write(tmp_path, VALID.format(name="pixel8"), name="pixel9")
    with pytest.raises(UserError) as info:
        load_profile(path)
    assert str(info.value) == (
        f'{path}: field \'name\' must equal the file name stem "pixel9", got "pixel8"; '
        "hint: rename the file or change 'name' so that they match"
    )


def test_toml_syntax_error_reports_line(tmp_path):
    message = error_for(tmp_path, edited("batch = 1", "batch 1"))
    line = VALID.splitlines().index("batch = 1") + 1
    assert message.startswith(f"{tmp_path / 'testphone.toml'}: invalid TOML: ")
    assert f"(at line {line}, column" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "testphone.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_profile(path)


def test_tflite_needs_fixed_shapes(tmp_path):
    from edgecompress.paths import device_profiles_dir

    text = (device_profiles_dir() / "pixel7.toml").read_text()
    text = text.replace("dynamic_shapes = false", "dynamic_shapes = true")
    path = tmp_path / "pixel7.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert "field 'runtime.dynamic_shapes' must be false when 'artifacts' has \"tflite\"" in str(err.value)
