"""PPIR: privacy-preserving image registration between two sites, as a 3D Slicer scripted module.

The panel is a thin layer over the ``ppir`` package: each party's run is a ``ppir`` subprocess of
Slicer's Python (PPIRLib.jobs), so the heavy work never blocks Slicer and Cancel really stops it.
"""
import enum
import logging
import pathlib
import subprocess
import tempfile
import unittest
from typing import Annotated, Optional

import ctk
import qt
import slicer
import vtk
from PPIRLib import dependencies, loopback, mrml, presets, sampledata
from PPIRLib.disclosure import disclosure
from PPIRLib.events import describe, summary_lines
from PPIRLib.jobs import (CONTRACT, METRICS, SAMPLINGS, SHARES, TRANSFORMS, Job, JobResult, RunSettings, create_identity,
                          show_identity, trust_certificate)
from PPIRLib.package import check_python
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class PPIR(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PPIR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["PPIR developers"]
        self.parent.helpText = _(
            "Privacy-preserving image registration: align your volume with another site's volume without either "
            "image leaving its owner in clear form. Party 1 (moving image) computes the transform; party 2 (fixed "
            "image) answers encrypted or secret-shared joint products. See the user guide in the project's docs.")
        self.parent.acknowledgementText = _(
            "Follows Taiello, Onen, Humbert, Lorenzi, Privacy Preserving Image Registration (MICCAI 2022; "
            "Medical Image Analysis 2024).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A pair of brain MRIs in the Sample Data module (PPIRLib.sampledata), as Slicer's extension template does."""
    import SampleData
    sampledata.register(SampleData.SampleDataLogic)


class Role(enum.Enum):
    MOVING = "moving"
    FIXED = "fixed"
    DEALER = "dealer"
    LOCAL = "local"

    def label(self):
        return {"moving": _("Party 1: moving-image owner"), "fixed": _("Party 2: fixed-image owner"),
                "dealer": _("MPC dealer (third machine)"),
                "local": _("Local clear-text test (both volumes here)")}[self.value]


# The private protocols, as ``ppir`` declares them (PPIRLib.jobs reads its settings contract).
Protocol = enum.Enum("Protocol", {name.upper(): name for name in CONTRACT.PRIVATE_PROTOCOLS})


@parameterNodeWrapper
class PPIRParameterNode:
    """All settings of the panel, saved with the scene."""

    role: Role = Role.MOVING
    protocol: Protocol = Protocol["FHE"]
    movingVolume: vtkMRMLScalarVolumeNode
    movingMask: vtkMRMLScalarVolumeNode      # a label map (or scalar volume): non-zero is inside
    fixedVolume: vtkMRMLScalarVolumeNode
    fixedMask: vtkMRMLScalarVolumeNode
    address: str = "127.0.0.1:7000"
    dealer: str = ""
    certificates: pathlib.Path
    shareResult: Annotated[str, Choice(list(SHARES))] = "transform"
    disclosurePolicy: pathlib.Path
    transform: Annotated[str, Choice(list(TRANSFORMS))] = "affine"
    metric: Annotated[str, Choice(list(METRICS))] = "ssd"
    sampling: Annotated[str, Choice(list(SAMPLINGS))] = "urs"
    sampleFraction: Annotated[float, WithinRange(0.001, 1.0)] = 0.1
    levels: str = "4,2,1"
    maxIterations: Annotated[int, WithinRange(1, 500)] = 50
    bsplineSpacing: Annotated[float, WithinRange(5.0, 200.0)] = 40.0
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    allowClear: bool = False
    showDetailedLog: bool = False
    keepTemporaryFiles: bool = False
    initialTransform: vtkMRMLTransformNode
    useMovingTransform: bool = True
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    applyToMoving: bool = False


# Preset setting (RunSettings name) -> parameter of PPIRParameterNode.
PRESET_PARAMETERS = {"transform": "transform", "metric": "metric", "sampling": "sampling",
                     "sample_fraction": "sampleFraction", "levels": "levels", "max_iterations": "maxIterations",
                     "bspline_spacing": "bsplineSpacing"}


#
# Logic: callable without the GUI, from the Python console or a script
#

class PPIRLogic(ScriptedLoadableModuleLogic):
    """Runs one party of a private registration on volume nodes.

    From Slicer's Python console, party 2 (the fixed-image owner) then party 1::

        import PPIR
        PPIR.PPIRLogic().run("fixed", fixedVolume=getNode("MRHead"), address="0.0.0.0:7000",
                             certificates="/path/my-identity")
        PPIR.PPIRLogic().run("moving", movingVolume=getNode("MRBrainTumor1"), address="hospital-b:7000",
                             certificates="/path/my-identity")

    ``certificates`` is this site's own identity folder (``createIdentity``, then ``trustCertificate``
    for each other site after checking its fingerprint by phone).

    ``run`` blocks (keeping Slicer responsive) and returns a PPIRLib.jobs.JobResult with the new nodes.
    """

    def getParameterNode(self):
        return PPIRParameterNode(super().getParameterNode())

    @staticmethod
    def settingsFrom(parameterNode) -> RunSettings:
        """The run settings the panel's parameter node holds."""
        role = parameterNode.role.value
        protocol = {"local": "clear", "dealer": "mpc"}.get(role, parameterNode.protocol.value)
        certificates, policy = (str(path or "") for path in (parameterNode.certificates, parameterNode.disclosurePolicy))
        certificates = "" if certificates == "." else certificates   # an unset path reads as "."
        policy = "" if policy == "." else policy
        return RunSettings(role=role, protocol=protocol, address=parameterNode.address.strip(),
                           dealer=parameterNode.dealer.strip(), certificates=certificates,
                           transform=parameterNode.transform, metric=parameterNode.metric,
                           sampling=parameterNode.sampling,
                           sample_fraction=parameterNode.sampleFraction, levels=parameterNode.levels.strip(),
                           max_iterations=parameterNode.maxIterations, bspline_spacing=parameterNode.bsplineSpacing,
                           share_result=parameterNode.shareResult, seed=parameterNode.seed,
                           disclosure_policy=policy if role in ("fixed", "local") else "")

    @staticmethod
    def missingDependencies(protocol: str) -> Optional[str]:
        """What ``protocol`` still lacks in this Python (one line), or None when everything is there."""
        missing = dependencies.missing_for(protocol)
        listing = missing["normal"] + missing["no_deps"]
        if protocol == "mpc" and dependencies.torch_problem():
            listing.append("torch (PyTorch extension)")
        return ", ".join(listing) or None

    @staticmethod
    def ensureDependencies(protocol: str, ask: bool = True) -> None:
        """Install what ``protocol`` needs, after the user agrees (``ask``).

        Raises RuntimeError saying why when the platform has no packages for it, the user declines,
        or an installation fails (pip's whole output is in the Python console).
        """
        reason = dependencies.unsupported(protocol)
        if reason:
            raise RuntimeError(reason)
        if protocol == "mpc":
            PPIRLogic._ensureTorch(ask)
        missing = dependencies.missing_for(protocol)
        try:
            if missing["normal"]:
                PPIRLogic._pipEnsure(missing["normal"], ask)
            if missing["no_deps"]:
                if ask and not slicer.util.confirmOkCancelDisplay(
                        _("PPIR needs these Python packages: {listing}. Install them now?").format(
                            listing=", ".join(missing["no_deps"])), windowTitle="PPIR"):
                    raise RuntimeError("User declined package installation")
                with slicer.util.WaitCursor():
                    slicer.util.pip_install(["--no-deps", *missing["no_deps"]])
        except subprocess.CalledProcessError as error:
            raise RuntimeError(_("installing the Python packages failed (pip exit code {code}); pip's output is "
                                 "in the Python console").format(code=error.returncode)) from None
        except RuntimeError as error:
            raise RuntimeError(_("the Python packages were not installed: {reason}").format(reason=error)) from None
        still = PPIRLogic.missingDependencies(protocol)
        if still:
            raise RuntimeError(_("still missing after the installation: {listing}; restart Slicer and try "
                                 "again").format(listing=still))

    @staticmethod
    def _pipEnsure(requirements: list, ask: bool) -> None:
        """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later: asks, installs, offers a restart), else pip_install."""
        try:
            import slicer.packaging
            pipEnsure = slicer.packaging.pip_ensure
        except (ImportError, AttributeError):
            pipEnsure = None
        if pipEnsure is not None:
            pipEnsure(requirements, requester="PPIR", prompt_install=ask)
            return
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("PPIR needs these Python packages: {listing}. Install them now?").format(
                    listing=", ".join(requirements)), windowTitle="PPIR"):
            raise RuntimeError("User declined package installation")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirements)

    @staticmethod
    def _ensureTorch(ask: bool) -> None:
        """PyTorch through Slicer's PyTorch extension (the build for this machine, shared with other extensions)."""
        problem = dependencies.torch_problem()
        if problem is None:
            return
        if problem != "PyTorch is not installed":
            raise RuntimeError(problem)   # never replace the torch another extension installed
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("MPC needs PyTorch, which PPIR gets through Slicer's PyTorch extension: install "
                                 "'PyTorch' in the Extensions Manager, restart Slicer and press Start again")) from None
        minimum = ".".join(map(str, dependencies.TORCH_MINIMUM))
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                              torchVersionRequirement=f">={minimum}")
        if torch is None:
            raise RuntimeError(_("PyTorch was not installed"))

    @staticmethod
    def createIdentity(folder: str, name: str) -> str:
        """This site's own key pair and self-signed certificate in ``folder`` (the key never leaves it)."""
        return create_identity(pathlib.Path(folder), name)

    @staticmethod
    def showIdentity(folder: str) -> str:
        """This site's fingerprint and the peers it trusts."""
        return show_identity(pathlib.Path(folder))

    @staticmethod
    def trustCertificate(folder: str, certificate: str, role: str, fingerprint: str) -> str:
        """Trust another site's certificate for ``role`` if it has the ``fingerprint`` read by phone."""
        return trust_certificate(pathlib.Path(folder), pathlib.Path(certificate), role, fingerprint)

    def start(self, settings: RunSettings, movingVolume=None, fixedVolume=None, keepFiles: bool = False,
              initialTransform=None, outputTransform=None, outputVolume=None, applyToMoving: bool = False,
              movingMask=None, fixedMask=None) -> Job:
        """Start one party's run in a subprocess (returns at once; poll the job).

        Its temporary files go under Slicer's temporary folder; ``keepFiles`` leaves them there.
        ``initialTransform``: where the moving party starts (see ``PPIRLib.mrml.initial_transform``);
        ``outputTransform``, ``outputVolume``: nodes to overwrite (None: new nodes); ``applyToMoving``:
        put the moving volume under the result transform. ``movingMask``, ``fixedMask``: label maps each
        party registers within (its own only; exported on its volume's grid, never sent).
        """
        check_python()
        self.ensureDependencies(settings.protocol)
        job = Job(settings, moving_node=movingVolume, fixed_node=fixedVolume,
                  temp_root=pathlib.Path(slicer.app.temporaryPath), keep_files=keepFiles,
                  initial_transform=initialTransform, output_transform=outputTransform, output_volume=outputVolume,
                  apply_to_moving=applyToMoving, moving_mask=movingMask, fixed_mask=fixedMask)
        job.start()
        return job

    def run(self, role: str, movingVolume=None, fixedVolume=None, show: bool = True, initialTransform=None,
            outputTransform=None, outputVolume=None, applyToMoving: bool = False, movingMask=None, fixedMask=None,
            **settings) -> JobResult:
        """One party's whole run, blocking; ``settings`` are RunSettings fields (protocol, address, ...)."""
        runSettings = RunSettings(role=role, **settings)
        job = self.start(runSettings, movingVolume, fixedVolume, False, initialTransform, outputTransform,
                         outputVolume, applyToMoving, movingMask, fixedMask)
        try:
            result = job.wait(on_event=lambda event: print(describe(event)[1]), idle=slicer.app.processEvents)
        except RuntimeError:
            logging.error("PPIR %s party failed; the command and its output:\n%s", role, job.log_text())
            raise
        if show and role != "dealer":
            self.show(result, fixedVolume if role in ("fixed", "local") else movingVolume)
        return result

    @staticmethod
    def show(result: JobResult, background) -> None:
        """The views: this site's volume behind, the warped volume (if any) in front at half fade, on its grid."""
        mrml.show_overlay(slicer.mrmlScene, background, result.warped_node, 0.5 if result.warped_node else 0.0)
        slicer.util.resetSliceViews()


#
# Widget: the panel
#

ROW_WIDGETS = {  # label name -> field name, for the rows that come and go with the role
    "protocolLabel": "protocolComboBox", "movingVolumeLabel": "movingVolumeSelector",
    "movingMaskLabel": "movingMaskSelector", "fixedVolumeLabel": "fixedVolumeSelector",
    "fixedMaskLabel": "fixedMaskSelector", "dealerLabel": "dealerLineEdit",
    "shareResultLabel": "shareResultComboBox",
    "disclosurePolicyLabel": "disclosurePolicyPathLineEdit",
    "initialTransformLabel": "initialTransformSelector", "outputTransformLabel": "outputTransformSelector",
    "outputVolumeLabel": "outputVolumeSelector",
}


def visibleRows(role: str, mpc: bool) -> dict:
    """Which rows the panel shows for a role."""
    return {"protocolLabel": role in ("moving", "fixed"), "movingVolumeLabel": role in ("moving", "local"),
            "movingMaskLabel": role in ("moving", "local"), "fixedVolumeLabel": role in ("fixed", "local"),
            "fixedMaskLabel": role in ("fixed", "local"), "dealerLabel": role in ("moving", "fixed") and mpc,
            "shareResultLabel": role == "moving", "disclosurePolicyLabel": role in ("fixed", "local"),
            "initialTransformLabel": role in ("moving", "local"), "outputTransformLabel": role != "dealer",
            "outputVolumeLabel": role != "dealer"}


class PPIRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: settings bound to the parameter node, Start / Cancel, progress, results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: Optional[Job] = None
        self._shownOutput = 0   # how many of the command's output lines the detailed log has had
        self._confirmedRecipients: set = set()   # (role, address, dealer) the user agreed to send to this session
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PPIR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.certificatesPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.logic = PPIRLogic()
        self._presets = presets.load_presets()
        for preset in self._presets:
            self.ui.presetComboBox.addItem(preset.title)
        self.ui.presetComboBox.addItem(_("Custom (see Advanced)"))
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.createIdentityButton.connect("clicked(bool)", self.onCreateIdentity)
        self.ui.showFingerprintButton.connect("clicked(bool)", self.onShowFingerprint)
        self.ui.trustCertificateButton.connect("clicked(bool)", self.onTrustCertificate)
        self.ui.fadeSliderWidget.connect("valueChanged(double)", lambda value: mrml.set_fade(slicer.mrmlScene, value))
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer is closing or the module is reloaded: the run's processes end and its files go."""
        self.removeObservers()
        self._timer.stop()
        if self._job is not None:
            self._job.process.cleanup()
            self._job = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        """The run's volumes are going away: its processes end (the peer is told) before the scene is cleared."""
        if self._job is not None:
            self._timer.stop()
            self._job.process.cleanup()
            self._job = None
            self._log(_("The scene was closed: the run was cancelled."))
            self.ui.resultsLabel.text = _("Cancelled.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.movingVolume and not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.movingVolume = first
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode: Optional[PPIRParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def onPresetChosen(self, index: int) -> None:
        """The user picked a preset: its settings go into the parameter node (and show under Advanced)."""
        if self._parameterNode is None or index >= len(self._presets):
            return
        with slicer.util.NodeModify(self._parameterNode):
            for field, value in self._presets[index].settings.items():
                setattr(self._parameterNode, PRESET_PARAMETERS[field], value)

    def _presetValues(self) -> dict:
        node = self._parameterNode
        values = {field: getattr(node, name) for field, name in PRESET_PARAMETERS.items()}
        values["levels"] = values["levels"].strip()
        return values

    def _initialTransform(self):
        """The transform the moving party starts from, if any (the chosen one, or the moving volume's own)."""
        node = self._parameterNode
        if node.role.value not in ("moving", "local"):
            return None
        return mrml.initial_transform(node.movingVolume, node.initialTransform, node.useMovingTransform)

    def _mask(self, party: str):
        """The chosen mask of ``party`` ("moving" or "fixed") if this role uses it, else None."""
        node = self._parameterNode
        if party == "moving":
            return node.movingMask if node.role.value in ("moving", "local") else None
        return node.fixedMask if node.role.value in ("fixed", "local") else None

    def _cannotStart(self) -> Optional[str]:
        """Why Start is disabled, or None."""
        node = self._parameterNode
        if node.role == Role.LOCAL and not node.allowClear:
            return _("Enable the local clear-text test under Advanced first.")
        try:
            self.logic.settingsFrom(node).check()
        except ValueError as error:
            return str(error)
        role = node.role.value
        protocol = self.logic.settingsFrom(node).protocol
        unsupported = dependencies.unsupported(protocol)
        if unsupported:
            return unsupported
        if role in ("moving", "local") and not node.movingVolume:
            return _("Select the moving volume.")
        if role in ("fixed", "local") and not node.fixedVolume:
            return _("Select the fixed volume.")
        problem = mrml.output_problem([node.movingVolume if role in ("moving", "local") else None,
                                       node.fixedVolume if role in ("fixed", "local") else None],
                                      node.outputTransform, node.outputVolume)
        if problem:
            return problem
        for mask, volume, what in ((self._mask("moving"), node.movingVolume, _("moving")),
                                   (self._mask("fixed"), node.fixedVolume, _("fixed"))):
            if mask is not None and mask is volume:
                return _("The {which} mask is the {which} volume itself: choose a label map.").format(which=what)
            if mask is not None and volume is not None and \
                    mask.GetParentTransformNode() is not volume.GetParentTransformNode():
                return _("The {which} mask and the {which} volume are under different transforms.").format(
                    which=what)
        initial = self._initialTransform()
        if initial is not None and not initial.IsTransformToWorldLinear():
            return _("The initial transform '{name}' is not linear: choose a rigid or affine one.").format(
                name=initial.GetName())
        return None

    def _updateGUI(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        role = node.role.value
        for labelName, shown in visibleRows(role, node.protocol.value in CONTRACT.DEALER_PROTOCOLS).items():
            getattr(self.ui, labelName).setVisible(shown)
            getattr(self.ui, ROW_WIDGETS[labelName]).setVisible(shown)
        self.ui.connectionCollapsibleButton.setVisible(role != "local")
        self.ui.registrationCollapsibleButton.setVisible(role in ("moving", "local"))
        self.ui.outputsCollapsibleButton.setVisible(role != "dealer")
        self.ui.applyToMovingCheckBox.setVisible(role in ("moving", "local"))
        self.ui.useMovingTransformCheckBox.setVisible(role in ("moving", "local"))
        chosen = presets.matching(self._presets, self._presetValues())
        wasBlocked = self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.currentIndex = self._presets.index(chosen) if chosen else len(self._presets)
        self.ui.presetComboBox.blockSignals(wasBlocked)
        self.ui.presetDescriptionLabel.text = chosen.description if chosen else _(
            "Settings of your own: see Advanced.")
        self.ui.addressLabel.text = _("Fixed party (host:port):") if role == "moving" else _("Listen on (host:port):")
        reason = self._cannotStart()
        self.ui.startButton.enabled = reason is None and self._job is None
        self.ui.startButton.toolTip = reason or _("Start this party's run.")
        self.ui.startNoteLabel.text = reason or ""
        self.ui.startNoteLabel.visible = reason is not None and self._job is None
        self.ui.cancelButton.enabled = self._job is not None

    def _log(self, line: str) -> None:
        self.ui.statusLog.appendPlainText(line)

    def onStart(self) -> None:
        node = self._parameterNode
        settings = self.logic.settingsFrom(node)
        self.ui.statusLog.clear()
        self.ui.progressBar.value = 0
        self.ui.resultsLabel.text = _("Running...")
        recipients = (settings.role, settings.address, settings.dealer)
        if settings.role != "local" and recipients not in self._confirmedRecipients:   # an explicit yes first
            masked = self._mask(settings.role) is not None if settings.role in ("moving", "fixed") else False
            if not slicer.util.confirmOkCancelDisplay(disclosure(settings, masked),
                                                      windowTitle=_("PPIR: what will be sent")):
                self.ui.resultsLabel.text = _("Not started.")
                return
            self._confirmedRecipients.add(recipients)
        initial = self._initialTransform()
        try:
            self._job = self.logic.start(settings, node.movingVolume, node.fixedVolume, node.keepTemporaryFiles,
                                         initial, node.outputTransform, node.outputVolume,
                                         node.applyToMoving and settings.role in ("moving", "local"),
                                         self._mask("moving"), self._mask("fixed"))
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as error:
            self.ui.resultsLabel.text = _("Not started.")
            self._updateGUI()
            slicer.util.errorDisplay(_("PPIR could not start: {error}").format(error=error), windowTitle="PPIR")
            return
        self._shownOutput = 0
        self._log(_("Started as {role} ({protocol}).").format(role=node.role.label(), protocol=settings.protocol))
        if initial is not None:
            self._log(_("Starting from the transform '{name}' (it stays on this computer).").format(
                name=initial.GetName()))
        for party in ("moving", "fixed"):
            if self._mask(party) is not None:
                self._log(_("Registering within the mask '{name}' (it stays on this computer).").format(
                    name=self._mask(party).GetName()))
        self._timer.start()
        self._updateGUI()

    def onCancel(self) -> None:
        if self._job is not None:
            self._log(_("Cancelling..."))
            self._job.cancel()

    def _poll(self) -> None:
        for event in self._job.poll():
            fraction, line = describe(event)
            if fraction is not None:
                self.ui.progressBar.value = int(round(100 * fraction))
            self._log(line)
        self._logOutput(self._job, self._parameterNode is not None and self._parameterNode.showDetailedLog)
        if self._job.running:
            return
        self._timer.stop()
        job = self._job
        if job.keep_files:
            self._log(_("Temporary files kept in {folder}").format(folder=job.process.workdir))
        try:
            result = job.finish()
        except (RuntimeError, OSError) as error:
            self._job = None
            message = str(error)
            self.ui.resultsLabel.text = _("Cancelled.") if message == "cancelled" else _("Failed: {message}").format(
                message=message)
            self._log(self.ui.resultsLabel.text)
            if message != "cancelled":
                logging.error("PPIR run failed; the command and its output:\n%s", job.log_text())
                self._logOutput(job, True)
                slicer.util.errorDisplay(_("PPIR stopped: {message}").format(message=message), windowTitle="PPIR",
                                         detailedText=job.log_text())
            self._updateGUI()
            return
        self._job = None
        self._showResult(job.settings, result)
        self._updateGUI()

    def _logOutput(self, job: Job, show: bool) -> None:
        """The command's own output lines not shown yet, in the status log (the detailed log)."""
        output = job.process.output
        if show:
            for line in output[self._shownOutput:]:
                self._log(line)
        self._shownOutput = len(output)

    def _showResult(self, settings: RunSettings, result: JobResult) -> None:
        self.ui.progressBar.value = 100
        self._log(_("Finished."))
        if settings.role == "dealer":   # a dealer has no image, no transform and no figures to show
            self.ui.resultsLabel.text = _("The dealer served its session.")
            return
        self.ui.resultsLabel.text = "\n".join(summary_lines(result.summary))
        node = self._parameterNode
        with slicer.util.NodeModify(node):   # the next run overwrites these, unless other nodes are chosen
            if result.transform_node is not None:
                node.outputTransform = result.transform_node
            if result.warped_node is not None:
                node.outputVolume = result.warped_node
        background = node.fixedVolume if settings.role in ("fixed", "local") else node.movingVolume
        PPIRLogic.show(result, background)
        self.ui.fadeSliderWidget.value = 0.5

    def onCreateIdentity(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("New folder for my identity"))
        if not folder:
            return
        name = qt.QInputDialog.getText(slicer.util.mainWindow(), "PPIR", _("Who are you (e.g. Radiology, Hospital A)?"))
        if not name:
            return
        try:
            with slicer.util.WaitCursor():
                text = self.logic.createIdentity(folder, name)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:   # TimeoutExpired included
            slicer.util.errorDisplay(_("Could not create the identity: {error}").format(error=error),
                                     windowTitle="PPIR")
            return
        self._parameterNode.certificates = pathlib.Path(folder)
        slicer.util.infoDisplay(text + "\n\n" + _(
            "Send identity.pem (never identity.key) to the other sites and read them the fingerprint by phone; "
            "then trust theirs with 'Trust the other site's certificate'."), windowTitle="PPIR")

    def _identityFolder(self) -> str | None:
        folder = str(self._parameterNode.certificates or "")
        if folder in ("", "."):
            slicer.util.errorDisplay(_("Choose or create your identity folder first."))
            return None
        return folder

    def onShowFingerprint(self) -> None:
        folder = self._identityFolder()
        if folder is None:
            return
        try:
            slicer.util.infoDisplay(self.logic.showIdentity(folder), windowTitle="PPIR")
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            slicer.util.errorDisplay(str(error), windowTitle="PPIR")

    def onTrustCertificate(self) -> None:
        folder = self._identityFolder()
        if folder is None:
            return
        certificate = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("The other site's identity.pem"),
                                                     "", "Certificates (*.pem)")
        if not certificate:
            return
        role = qt.QInputDialog.getItem(slicer.util.mainWindow(), "PPIR", _("That site's role:"),
                                       ["moving", "fixed", "dealer"], 0, False)
        fingerprint = qt.QInputDialog.getText(slicer.util.mainWindow(), "PPIR",
                                              _("The fingerprint that site read to you (SHA-256):"))
        if not role or not fingerprint:
            return
        try:
            text = self.logic.trustCertificate(folder, certificate, role, fingerprint)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            slicer.util.errorDisplay(_("Not trusted: {error}").format(error=error), windowTitle="PPIR")
            return
        slicer.util.infoDisplay(text, windowTitle="PPIR")


#
# Self-test: both parties inside this Slicer, over loopback
#

class PPIRTest(ScriptedLoadableModuleTest):
    """Runs the fixed and moving parties (and the MPC dealer) on a generated phantom and checks the alignment."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PPIR_FHE_loopback, self.test_PPIR_MPC_loopback):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:
                self.delayDisplay(str(skipped))

    def test_PPIR_FHE_loopback(self):
        self._loopback("fhe")

    def test_PPIR_MPC_loopback(self):
        self._loopback("mpc")

    def _loopback(self, protocol: str):
        missing = PPIRLogic.missingDependencies(protocol)
        if missing:   # a test never installs packages (build machines are often offline)
            self.skipTest(f"{protocol.upper()} skipped: its Python packages are not installed ({missing})")
        self.delayDisplay(f"Fixed and moving parties over loopback ({protocol.upper()})")
        with tempfile.TemporaryDirectory(prefix="ppir-selftest-") as folder:
            outcome = loopback.run_loopback(slicer.mrmlScene, protocol, pathlib.Path(folder),
                                            idle=slicer.app.processEvents)
        self.assertLess(outcome["error_mm"], loopback.TOLERANCE_MM)
        self.assertEqual(outcome["fixed"].summary["shared"], "transform")
        self.assertIsNotNone(outcome["fixed"].transform_node)
        self.assertIsNotNone(outcome["moving"].warped_node)
        PPIRLogic.show(outcome["moving"], outcome["moving_node"])
        self.delayDisplay(f"{protocol.upper()} test passed: largest error {outcome['error_mm']:.2f} mm")
