"""Models in Flax NNX. Parameters carry logical axis names (``out_sharding``)."""
