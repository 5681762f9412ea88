"""The static HTML report and the drawing it shares (palette, overlays, templates)."""
