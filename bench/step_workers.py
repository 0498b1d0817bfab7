"""What bench/train_step.py measures, each in its own process: one
contender's train steps (alexnet_jax's jitted step or the PyTorch peer), the
largest batch that fits, and the machine's matrix-multiply rates. Each
worker returns a JSON-able dict; train_step.py runs them and prints tables.
Also used by the other benches (`jax_step`, `synthetic_batch`, `time_calls`, `best_ms`).
"""

from __future__ import annotations

import os
import resource
import statistics
import time

COMPARABLE = {"model.within_channel_norm": False, "pca_noise_std": 0.0}  # the PyTorch peer has neither


def _config(
    name: str, batch: int, micro_batch: int = 0, dtype: str = "float32", overrides: str = "", comparable: bool = True
):
    """The model's config for the benchmark; `overrides` as "model.field=value,...";
    `comparable`: without what the PyTorch peer lacks (COMPARABLE)."""
    import ast

    from configs import digits, paper

    config = (paper if name == "paper" else digits).get_config()
    for override in filter(None, overrides.split(",")):
        field, _, value = override.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string, e.g. model.conv1_impl=direct
        _set_field(config, field, value)
    config.batch_size = batch
    config.micro_batch_size = micro_batch
    config.model.dtype = dtype
    config.mesh = (1, 1)
    for field, value in COMPARABLE.items() if comparable else ():
        _set_field(config, field, value)
    return config


def _set_field(config, field: str, value) -> None:
    """Sets a dotted config field ("model.use_lrn")."""
    parent, _, leaf = field.rpartition(".")
    (config[parent] if parent else config)[leaf] = value


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_ms(fn, *args, repeats: int) -> float:
    """Milliseconds of the fastest of `repeats` calls of the jax function
    `fn(*args)` (waited for), after one untimed call."""
    import jax

    return 1000 * min(time_calls(lambda: jax.block_until_ready(fn(*args)), 1, repeats))


def jax_step(model_name: str, batch: int, dtype: str, micro_batch: int, overrides: str = "", comparable: bool = True):
    """(jitted train step, state, key, config) of alexnet_jax on one device."""
    import functools

    import jax

    from alexnet_jax.data import augment
    from alexnet_jax.parallel import sharding
    from alexnet_jax.train import micro_batch as micro_batch_tuning  # the argument is micro_batch
    from alexnet_jax.train import steps

    config = _config(model_name, batch, micro_batch, dtype, overrides, comparable)
    mesh = sharding.make_mesh(config.mesh)
    state = steps.create_train_state(config, steps.create_model(config), 10_000, mesh)
    stats = augment.published_stats(config.mean_rgb)  # synthetic data: any fixed statistics
    key = jax.random.key(0)

    def build_step(micro: int):
        step_config = micro_batch_tuning.with_micro_batch_size(config, micro)
        return jax.jit(functools.partial(steps.train_step, config=step_config, stats=stats), donate_argnums=0)

    # -1 resolves as `python -m alexnet_jax.main` resolves it (measured once per machine and model).
    micro, step_fn = micro_batch_tuning.resolve(config, build_step, state, lambda: synthetic_batch(config, batch), key)
    config.micro_batch_size = micro
    return step_fn, state, key, config


def synthetic_batch(config, batch: int) -> dict:
    """Random uint8 images of the host-side size and labels, on the device."""
    import numpy as np

    from alexnet_jax.parallel import sharding

    rng = np.random.default_rng(0)
    size = config.resize_size
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, config.model.num_classes, (batch,))
    return sharding.global_batch({"image": images, "label": labels}, sharding.make_mesh(config.mesh))


def _step_bytes(compiled) -> int:
    """Device bytes XLA's memory analysis gives the compiled step."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def worker_jax(
    model_name: str, batch: int, dtype: str, warmup: int, repeats: int, micro_batch: int, overrides: str = ""
) -> dict:
    import jax

    step_fn, state, key, config = jax_step(model_name, batch, dtype, micro_batch, overrides)
    if not repeats:  # only resolve micro_batch_size=-1 (measured once per machine, then read)
        return {"micro_batch_size": config.micro_batch_size}
    data = synthetic_batch(config, batch)
    start = time.perf_counter()
    compiled = step_fn.lower(state, data, key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = compiled(holder["state"], data, key)
        jax.block_until_ready(metrics)

    times = time_calls(run_step, warmup, repeats)
    device = jax.local_devices()[0]
    on_gpu = device.platform == "gpu"
    return {
        "times": times,
        "compile_s": compile_s,
        "peak_mb": device.memory_stats()["peak_bytes_in_use"] / 2**20 if on_gpu else _peak_rss_mb(),
        "xla_gflop_per_image": cost.get("flops", 0.0) / batch / 1e9,
        "micro_batch_size": config.micro_batch_size,  # resolved by jax_step
    }


def worker_fit(model_name: str, batch: int, dtype: str) -> dict:
    """The largest power-of-two multiple of `batch` whose step XLA's memory
    analysis fits in the device's memory limit (compiled, never run): the
    bytes of batch and 2 x batch, extrapolated linearly."""
    import jax
    import jax.numpy as jnp

    step_fn, state, key, config = jax_step(model_name, batch, dtype, 0)

    def step_bytes(b: int) -> int:
        size = config.resize_size
        data = {
            "image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32),
        }
        return _step_bytes(step_fn.lower(state, data, key).compile())

    small, large = step_bytes(batch), step_bytes(2 * batch)
    per_image = (large - small) / batch
    stats = jax.local_devices()[0].memory_stats()  # None on CPU: the machine's memory instead
    limit = stats["bytes_limit"] if stats else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fitted = batch
    while small + per_image * (2 * fitted - batch) <= limit:
        fitted *= 2
    return {"batch": fitted, "per_image_mb": per_image / 2**20, "limit_gb": limit / 2**30}


def worker_torch(model_name: str, batch: int, dtype: str, warmup: int, repeats: int, compiled: bool = False) -> dict:
    """The PyTorch peer's step times; `compiled`: torch.compile + channels_last,
    its compile time being the first call's time less a step's."""
    import torch

    from bench.torch_alexnet import AlexNetTorch, make_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default float32 precision on GPU
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = _config(model_name, batch)
    m = config.model
    model = AlexNetTorch(m.num_classes, m.input_size, m.width, m.towers).to(device).train()
    step = make_step(model, m.input_size, tuple(config.mean_rgb), getattr(torch, dtype), compiled)
    size = config.resize_size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, m.num_classes, (batch,), device=device)
    [first] = time_calls(lambda: step(images, labels), 0, 1)
    times = time_calls(lambda: step(images, labels), max(warmup - 1, 0), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb()
    compile_s = max(first - statistics.median(times), 0.0) if compiled else None
    return {"times": times, "compile_s": compile_s, "peak_mb": peak}


def worker_gemm() -> dict:
    """Best matrix-multiply rates of random n x n matrices, GFLOP/s per
    library: on CPU float32 with n = 4096 through jax (`jnp.dot`), numpy and
    torch (where installed), all on every core; on GPU jax's float32 and
    bfloat16 with n = 8192."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    device = jax.local_devices()[0]
    on_gpu = device.platform == "gpu"
    n, dtypes, repeats = (8192, ("float32", "bfloat16"), 20) if on_gpu else (4096, ("float32",), 5)
    dot = jax.jit(jnp.dot)
    rates = {}
    for dtype in dtypes:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        times = time_calls(lambda a=a, b=b: dot(a, b).block_until_ready(), 3, repeats)
        rates[dtype] = {"jax": 2 * n**3 / min(times) / 1e9}
    if not on_gpu:
        a, b = (np.random.default_rng(seed).standard_normal((n, n), np.float32) for seed in (0, 1))
        rates["float32"]["numpy"] = 2 * n**3 / min(time_calls(lambda: a @ b, 3, repeats)) / 1e9
        try:
            import torch
        except ImportError:
            pass
        else:
            torch.set_num_threads(os.cpu_count() or 1)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            rates["float32"]["torch"] = 2 * n**3 / min(time_calls(lambda: ta @ tb, 3, repeats)) / 1e9
    return {"platform": device.platform, "device": device.device_kind, "n": n, "gflops": rates}
