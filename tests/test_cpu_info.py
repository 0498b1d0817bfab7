"""The CPU as benchmark tables name it and as measured choices are keyed,
read from /proc/cpuinfo-format text: an Intel Xeon with AMX (the machine of
issue 17, whose bfloat16 rows need AMX) and an AMD EPYC without it."""

import os

import pytest

from alexnet_jax.platform import cpu_info
from alexnet_jax.train import micro_batch
from configs import paper


def _cpuinfo(vendor: str, model: str, flags: str) -> str:
    """/proc/cpuinfo's text for two logical CPUs (only the fields read, and
    the vendor's, kept; real flag lists are longer)."""
    cpu = f"vendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: fpu sse sse2 avx avx2 fma {flags}\n"
    return "\n".join(f"processor\t: {i}\n{cpu}" for i in range(2))


XEON = _cpuinfo(
    "GenuineIntel",
    "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    "avx512f avx512bw avx512vl avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8",
)
EPYC = _cpuinfo("AuthenticAMD", "AMD EPYC", "avx512f avx512bw avx512vl avx512_bf16 avx512_vnni")


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str, name: str = "cpuinfo") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_a_xeon_with_amx_is_named_with_it(cpuinfo):
    path = cpuinfo(XEON)
    assert cpu_info.cpu_model_and_flags(path)[0] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert cpu_info.cpu_has_amx(path)
    assert cpu_info.cpu_description(path) == (
        f"Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, {os.cpu_count()} CPUs, with AVX2, AVX-512F, AVX-512 BF16, AMX"
    )


def test_an_epyc_without_amx_says_what_it_lacks(cpuinfo):
    path = cpuinfo(EPYC)
    assert not cpu_info.cpu_has_amx(path)
    assert cpu_info.cpu_description(path) == (
        f"AMD EPYC, {os.cpu_count()} CPUs, with AVX2, AVX-512F, AVX-512 BF16; without AMX"
    )


def test_without_cpuinfo_the_cpu_is_unknown(tmp_path):
    missing = str(tmp_path / "none")
    assert cpu_info.cpu_model_and_flags(missing) == ("unknown CPU", set())
    assert cpu_info.cpu_description(missing).startswith("unknown CPU, ")
    assert not cpu_info.cpu_has_amx(missing)


def test_each_cpu_gets_its_own_micro_batch_measurement(cpuinfo, monkeypatch):
    """A micro-batch size measured on one CPU is not read on another: the
    issue's Xeon ran the paper step fastest in micro-batches of 32, this
    project's AMD EPYC whole."""
    config = paper.get_config()
    config.mesh = (1, 1)
    read = cpu_info.cpu_model_and_flags
    keys = {}
    for name, text in (("xeon", XEON), ("epyc", EPYC)):
        path = cpuinfo(text, name)
        monkeypatch.setattr(cpu_info, "cpu_model_and_flags", lambda path=path: read(path))
        keys[name] = micro_batch.measurement_key(config)
    assert keys["xeon"]["cpu_extensions"] == ["AMX", "AVX-512 BF16", "AVX-512F", "AVX2"]
    assert keys["epyc"]["cpu_extensions"] == ["AVX-512 BF16", "AVX-512F", "AVX2"]
    assert micro_batch._key_id(keys["xeon"]) != micro_batch._key_id(keys["epyc"])
