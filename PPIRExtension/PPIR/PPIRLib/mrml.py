"""MRML glue: volume nodes to image files and back, transform files to transform nodes, the views.

Only MRML and VTK classes are used (through the scene), so this runs inside Slicer and under the
``slicer-core`` wheel alike. Reading and writing go through Slicer's own storage nodes, which
convert between Slicer's RAS world and the LPS convention of image and ITK transform files.
"""
from __future__ import annotations

from pathlib import Path

LINEAR_MODELS = ("rigid", "affine")


def _with_storage(scene, storage_class: str, path: Path, action) -> bool:
    """Run ``action(storage_node)`` with a temporary storage node for ``path``; remove it after."""
    storage = scene.AddNewNodeByClass(storage_class)
    try:
        storage.SetFileName(str(path))
        return bool(action(storage))
    finally:
        scene.RemoveNode(storage)


def export_volume(volume_node, path: Path) -> Path:
    """Write a scalar volume node to an image file with its geometry (IJK-to-RAS becomes LPS)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("no volume selected, or the volume has no image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' is not a scalar volume")
    path = Path(path)

    def write(storage):
        storage.SetUseCompression(False)
        return storage.WriteData(volume_node)
    if not _with_storage(volume_node.GetScene(), "vtkMRMLVolumeArchetypeStorageNode", path, write):
        raise OSError(f"could not write volume '{volume_node.GetName()}' to {path}")
    return path


def import_volume(scene, path: Path, name: str):
    """Read an image file into a new scalar volume node named ``name``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if not _with_storage(scene, "vtkMRMLVolumeArchetypeStorageNode", path, lambda s: s.ReadData(node)):
        scene.RemoveNode(node)
        raise OSError(f"could not read volume {path}")
    node.CreateDefaultDisplayNodes()
    return node


def import_transform(scene, path: Path, name: str, model: str = "affine"):
    """Read an ITK transform file (fixed-to-moving, LPS) into a new transform node.

    Slicer stores the same mapping as the node's transform *from parent*, so placing the moving
    volume under this node shows it aligned with the fixed volume. Rigid and affine results become
    linear transform nodes (editable in the Transforms module); a B-spline result (affine + B-spline
    composite) becomes a general transform node; a displacement-field image becomes a grid transform.
    """
    path = Path(path)
    if path.suffix in (".nrrd", ".nii", ".mha", ".mhd") or path.name.endswith(".nii.gz"):
        node_class = "vtkMRMLGridTransformNode"
    elif model in LINEAR_MODELS:
        node_class = "vtkMRMLLinearTransformNode"
    else:
        node_class = "vtkMRMLTransformNode"
    node = scene.AddNewNodeByClass(node_class, name)
    if not _with_storage(scene, "vtkMRMLTransformStorageNode", path, lambda s: s.ReadData(node)):
        scene.RemoveNode(node)
        raise OSError(f"could not read transform {path}")
    return node


def _nodes(scene, node_class: str) -> list:
    collection = scene.GetNodesByClass(node_class)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def show_overlay(scene, background, foreground=None, opacity: float = 0.5) -> None:
    """Every slice view: ``background`` behind, ``foreground`` in front at ``opacity`` (the fade).

    The slice planes follow the foreground's grid (the fixed geometry) when there is one.
    """
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
    if foreground is not None:
        for slice_node in _nodes(scene, "vtkMRMLSliceNode"):
            slice_node.RotateToVolumePlane(foreground)


def set_fade(scene, opacity: float) -> None:
    """Move the foreground/background fade of every slice view."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetForegroundOpacity(opacity)
