"""The device mesh, sharding of parameters and batches, collectives."""
