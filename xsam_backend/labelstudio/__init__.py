"""The Label Studio edge: label config, prompts from smart regions, results, media, API client.

Nothing in this package imports torch: the web process imports it.
"""
