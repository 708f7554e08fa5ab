"""Visual search over images and video frames with the CLIP service: `python -m examples.visual_search`."""
