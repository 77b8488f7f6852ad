"""Closed-loop environments: the interface (:mod:`.base`) and the embedded demo task (:mod:`.demo`).

Environments import neither TensorFlow nor JAX: a simulator that cannot share a
process with TensorFlow (MuJoCo's renderer) runs in a worker process of its own.
"""
