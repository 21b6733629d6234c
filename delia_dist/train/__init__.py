"""Training: the loop, one step, its counters, the loss wrapper and the lr schedule."""
