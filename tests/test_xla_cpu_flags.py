"""The XLA:CPU flag the project sets (alexnet_jax/platform/xla_cpu_flags.py): added
by the entry points before JAX starts, a user's own value kept, and the same
gradients as XLA's default (YNNPACK) convolutions, computed in a fresh process."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.platform import xla_cpu_flags

# Writes the model's parameter gradients to the .npz path it is given and
# prints whether XLA handed a convolution to YNNPACK in the process running it.
_GRADIENTS = textwrap.dedent(
    """
    import sys
    from alexnet_jax.platform import machine_settings
    machine_settings.apply_machine_settings(absl_app=False)  # as the entry points do, before JAX starts
    import jax, jax.numpy as jnp, numpy as np, optax
    from alexnet_jax.model import network

    model = network.AlexNet(num_classes=10, input_size=64, width=0.25)  # conv1's 24 filters: enough for YNNPACK
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3)) * 50
    labels = jnp.array([1, 7, 3, 0])
    params = model.init(jax.random.key(0), x, train=False)["params"]

    def loss(params):
        logits = model.apply({"params": params}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad = jax.jit(jax.grad(loss))
    hlo = grad.lower(params).compile().as_text()
    flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grad(params))}
    np.savez(sys.argv[1], **flat)
    print("ynn_convolution", any("__ynn_fusion" in l and "conv_general_dilated" in l for l in hlo.splitlines()))
    """
)


def _gradients_in_a_fresh_process(xla_flags: str, out) -> tuple[dict, bool]:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-c", _GRADIENTS, str(out)], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    with np.load(out) as grads:
        return dict(grads), result.stdout.split()[-1] == "True"


def test_the_flag_is_added_before_jax_starts_and_a_users_own_is_kept(monkeypatch):
    monkeypatch.setattr(xla_cpu_flags, "backends_started", lambda: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu_flags.apply(env)
    ours = f"{xla_cpu_flags.FLAG}=individual_dot"
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", ours]
    assert xla_cpu_flags.apply(env) and env["XLA_FLAGS"].count(xla_cpu_flags.FLAG) == 1  # idempotent
    own = {"XLA_FLAGS": f"{xla_cpu_flags.FLAG}=individual_dot,individual_convolution"}
    assert not xla_cpu_flags.apply(own)
    assert own["XLA_FLAGS"] == f"{xla_cpu_flags.FLAG}=individual_dot,individual_convolution"
    empty = {}
    assert xla_cpu_flags.apply(empty) and empty["XLA_FLAGS"] == f"{xla_cpu_flags.FLAG}=individual_dot"


def test_the_log_line_says_what_xla_runs_with():
    ours = f"{xla_cpu_flags.FLAG}=individual_dot"
    assert xla_cpu_flags.describe("", True) == f"{ours} (added to XLA_FLAGS)"
    assert xla_cpu_flags.describe(ours, True) == f"{ours} (already in XLA_FLAGS)"
    own = f"{xla_cpu_flags.FLAG}=individual_dot,individual_convolution"
    assert xla_cpu_flags.describe(f"--xla_force_host_platform_device_count=2 {own}", False) == f"XLA_FLAGS' own {own}"


def test_other_jaxlib_releases_keep_xlas_defaults(monkeypatch):
    """XLA aborts on a flag it does not know: releases not measured are left alone."""
    monkeypatch.setattr(xla_cpu_flags, "backends_started", lambda: False)
    monkeypatch.setattr(xla_cpu_flags.importlib.metadata, "version", lambda name: "0.4.38")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert not xla_cpu_flags.apply(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_too_late_leaves_the_flags_and_warns(monkeypatch, caplog):
    monkeypatch.setattr(xla_cpu_flags, "backends_started", lambda: True)
    env = {"XLA_FLAGS": ""}
    assert not xla_cpu_flags.apply(env)
    assert env["XLA_FLAGS"] == "" and "apply it before JAX starts" in caplog.text


def test_this_process_runs_without_ynnpack_convolutions():
    """conftest.py applies the flag before JAX starts, as the entry points do."""
    assert f"{xla_cpu_flags.FLAG}=individual_dot" in os.environ["XLA_FLAGS"].split()
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME"))
    hlo = conv.lower(jnp.ones((2, 48, 9, 9)), jnp.ones((64, 48, 3, 3))).compile().as_text()
    assert "__ynn_fusion" not in hlo


def test_same_gradients_as_xlas_default_convolutions(tmp_path):
    """The flag changes which library runs the convolutions, not what the
    network computes: every gradient matches the one with YNNPACK's
    convolutions (XLA's default), each from a fresh process."""
    ours, ours_ynn = _gradients_in_a_fresh_process("", tmp_path / "ours.npz")
    plain, plain_ynn = _gradients_in_a_fresh_process(
        f"{xla_cpu_flags.FLAG}=individual_dot,individual_convolution,reduce", tmp_path / "plain.npz"
    )
    assert plain_ynn and not ours_ynn  # really the two paths
    assert ours.keys() == plain.keys()
    for name, want in plain.items():
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(ours[name], want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
