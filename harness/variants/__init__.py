"""The variant factory: base models, one recipe per file, a content-addressed cache."""
