"""Sample models (TF1 graph and Keras), their data, and the demo. Not needed by the core."""
