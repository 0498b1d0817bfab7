"""Training and evaluation metrics as clu metric collections."""

# No `from __future__ import annotations`: clu reads these annotations at runtime.

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics


def per_example_outputs(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example loss and top-1/top-5 error (0 or 1), for clu's Average."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top1 = (jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    _, top_k = jax.lax.top_k(logits, k)
    top5 = 1.0 - jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
    return {"loss": loss, "top1_error": top1, "top5_error": top5}


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    top1_error: metrics.Average.from_output("top1_error")
    top5_error: metrics.Average.from_output("top5_error")
    learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
    """Averages over examples whose `mask` is 1 (padding excluded)."""

    loss: metrics.Average.from_output("loss")
    top1_error: metrics.Average.from_output("top1_error")
    top5_error: metrics.Average.from_output("top5_error")

    def num_examples(self) -> int:
        return int(self.loss.count)
