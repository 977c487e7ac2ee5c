"""Engines turn (image, prompt) into segments: the X-SAM engine and a weight-free fallback."""
