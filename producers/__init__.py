"""Producers: read imagery, cut it into chips, encode the chips, write embedding products."""
