"""MRML glue: volume nodes to image files and back, transform nodes to files and back, the views.

Only MRML and VTK classes are used (through the scene), so this runs inside Slicer and under the
``slicer-core`` wheel alike. Reading and writing go through Slicer's own storage nodes, which
convert between Slicer's RAS world and the LPS convention of image and ITK transform files.
"""
from __future__ import annotations

from pathlib import Path

from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingCore import vtkImageReslice

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


def export_mask(mask_node, volume_node, path: Path) -> Path:
    """Write ``mask_node`` (a label map or scalar volume: non-zero is inside) on ``volume_node``'s grid.

    The mask is resampled (nearest voxel) onto the volume's voxels through both nodes' IJK-to-RAS
    matrices, so a label map with another extent or spacing (one exported from a segmentation, say) gives
    a file with exactly the volume's geometry, as ``ppir`` requires. Outside the mask's own grid is outside.
    Both must be under the same parent transform (the files are written without it).
    """
    if mask_node is None or mask_node.GetImageData() is None:
        raise ValueError("no mask selected, or the mask has no image data")
    if mask_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"the mask '{mask_node.GetName()}' is not a label map or scalar volume")
    if mask_node.GetParentTransformNode() is not volume_node.GetParentTransformNode():
        raise ValueError(f"the mask '{mask_node.GetName()}' and the volume '{volume_node.GetName()}' are under "
                         "different transforms: put them under the same one (or harden it)")
    source = vtkImageData()
    source.ShallowCopy(mask_node.GetImageData())
    source.SetOrigin(0.0, 0.0, 0.0)          # MRML keeps the geometry in the node, not in the image data
    source.SetSpacing(1.0, 1.0, 1.0)
    to_mask = vtkMatrix4x4()
    mask_node.GetRASToIJKMatrix(to_mask)
    from_volume = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(from_volume)
    axes = vtkMatrix4x4()
    vtkMatrix4x4.Multiply4x4(to_mask, from_volume, axes)      # volume IJK -> RAS -> mask IJK
    reslice = vtkImageReslice()
    reslice.SetInputData(source)
    reslice.SetResliceAxes(axes)
    reslice.SetInterpolationModeToNearestNeighbor()
    reslice.SetBackgroundLevel(0.0)
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    reslice.SetOutputExtent(volume_node.GetImageData().GetExtent())
    reslice.Update()
    values = vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars())
    inside = (values != 0).astype("uint8")
    if not inside.any():
        raise ValueError(f"the mask '{mask_node.GetName()}' has no non-zero voxel inside the volume "
                         f"'{volume_node.GetName()}'")
    grid = vtkImageData()
    grid.SetExtent(volume_node.GetImageData().GetExtent())
    grid.GetPointData().SetScalars(numpy_to_vtk(inside, deep=True))
    scene = volume_node.GetScene()
    on_grid = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{mask_node.GetName()} (export)")
    try:
        on_grid.SetIJKToRASMatrix(from_volume)
        on_grid.SetAndObserveImageData(grid)
        export_volume(on_grid, path)
    finally:
        scene.RemoveNode(on_grid)
    return Path(path)


def import_volume(scene, path: Path, name: str, target=None):
    """Read an image file into a new scalar volume node named ``name``, or into ``target`` (overwritten).

    The file is read into a new node first, so a file that cannot be read leaves ``target`` as it was.
    """
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if not _with_storage(scene, "vtkMRMLVolumeArchetypeStorageNode", path, lambda s: s.ReadData(node)):
        scene.RemoveNode(node)
        raise OSError(f"could not read volume {path}")
    if target is not None:
        target.CopyContent(node)
        scene.RemoveNode(node)
        node = target
    node.CreateDefaultDisplayNodes()
    return node


def import_transform(scene, path: Path, name: str, model: str = "affine", target=None):
    """Read an ITK transform file (fixed-to-moving, LPS) into a new transform node, or into ``target``.

    An existing ``target`` (any transform node) is overwritten only once the file has been read.

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
    if target is not None:
        target.CopyContent(node)
        scene.RemoveNode(node)
        node = target
    return node


def export_transform_from_world(transform_node, path: Path) -> Path:
    """Write the mapping from world into ``transform_node``'s space (its parents included) as an ITK file.

    A volume under ``transform_node`` is shown where this mapping, read as fixed-to-moving, puts it:
    it is the transform a registration starts from. Only linear transforms are accepted.
    """
    if not transform_node.IsTransformToWorldLinear():
        raise ValueError(f"the initial transform '{transform_node.GetName()}' is not linear: a registration starts "
                         f"from a rigid or affine transform")
    scene = transform_node.GetScene()
    matrix = vtkMatrix4x4()
    transform_node.GetMatrixTransformFromWorld(matrix)
    flat = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    try:
        flat.SetMatrixTransformFromParent(matrix)
        if not _with_storage(scene, "vtkMRMLTransformStorageNode", Path(path), lambda s: s.WriteData(flat)):
            raise OSError(f"could not write the initial transform to {path}")
    finally:
        scene.RemoveNode(flat)
    return Path(path)


def initial_transform(moving_volume, chosen=None, use_moving_transform: bool = True):
    """The transform a registration starts from: ``chosen``, else the moving volume's own (if wanted), else None."""
    if chosen is not None:
        return chosen
    if use_moving_transform and moving_volume is not None:
        return moving_volume.GetParentTransformNode()
    return None


def output_problem(inputs: list, output_transform=None, output_volume=None):
    """Why the chosen output nodes cannot take a result (None if they can): overwriting an input, or a
    transform that is itself transformed (the result maps world coordinates, not its parent's)."""
    if output_volume is not None and any(output_volume is node for node in inputs if node is not None):
        return f"the output volume '{output_volume.GetName()}' is an input volume: choose another or create a new one"
    if output_transform is not None and output_transform.GetParentTransformNode() is not None:
        return (f"the output transform '{output_transform.GetName()}' is under another transform: choose another or "
                f"create a new one")
    return None


def mark_registration(transform_node, moving_volume=None, fixed_volume=None) -> None:
    """Record on the result which volumes it registers (Slicer's spatial-registration node references)."""
    for role, volume in ((transform_node.GetMovingNodeReferenceRole(), moving_volume),
                         (transform_node.GetFixedNodeReferenceRole(), fixed_volume)):
        transform_node.SetNodeReferenceID(role, volume.GetID() if volume is not None else None)


def apply_transform(volume_node, transform_node) -> None:
    """Put ``volume_node`` under ``transform_node`` (shown registered, not resampled)."""
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())


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
