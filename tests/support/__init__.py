"""Helpers the test layers share: processes, models, fake hubs, chart rendering."""
