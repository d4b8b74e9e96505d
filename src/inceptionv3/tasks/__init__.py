"""What a user runs over the engine: predict, features, evaluate, export."""
