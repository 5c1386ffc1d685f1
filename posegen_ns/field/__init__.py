"""The articulated human field (canonical Gaussians + linear blend skinning) and its rasteriser backends."""
