"""Fine-tuning of the predictor's adapters: ``regressor_trainer`` and ``sentiment_trainer``, each
with its ``*_config`` module, a shared optimisation loop (``loop``), evaluation metrics and
baselines (``evaluation``) and the checkpoint folder layout (``checkpoint``)."""
