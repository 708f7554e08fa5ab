"""Fetching caller-supplied image URLs: the SSRF guard and the bounded downloader."""
