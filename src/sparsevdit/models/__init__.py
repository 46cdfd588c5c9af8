"""Small video models, procedural training data and the pieces that go with them."""
