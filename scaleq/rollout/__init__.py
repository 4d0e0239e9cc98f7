"""A trained model rolled forward on its own predictions: the rollout, its metrics, animations, and
the end-of-epoch hook the trainer is handed. Needs data and models only."""
