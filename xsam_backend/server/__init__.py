"""The HTTP side: a Flask app factory serving Label Studio's ML backend protocol."""
