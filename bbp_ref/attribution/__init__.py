"""Attribution on top of the engine: the BBp rules and the bias backpropagation."""
