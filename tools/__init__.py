"""Dev tools that build the bundled default corpus and train the bundled default model."""
