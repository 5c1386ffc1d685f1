"""Ground-truth rendering of body meshes (CPU z-buffer rasteriser) for the synthetic capture."""

from posegen_ns.render.mesh import MeshRender, part_colors, render_mesh

__all__ = ["MeshRender", "part_colors", "render_mesh"]
