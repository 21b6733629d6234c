"""Evaluation: downstream tasks (translation, formatted text), special-token alignment and
the gradient-buffering diagnostic."""
