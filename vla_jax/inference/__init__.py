"""Running trained policies: load a checkpoint or release, infer, export, serve over websockets."""
