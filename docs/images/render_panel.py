"""Render a layout preview of the PPIR panel (PPIRExtension/PPIR/Resources/UI/PPIR.ui) without Slicer.

There is no Slicer application here, so Slicer's and CTK's widget classes are replaced by plain Qt
widgets of the same base class (ctkCollapsibleButton -> QGroupBox, ctkPathLineEdit -> QLineEdit,
ctkSliderWidget -> QDoubleSpinBox, qMRMLNodeComboBox -> QComboBox, qMRMLWidget -> QWidget), filled as
party 1 (moving-image owner, FHE) would see them, and the picture says it is a layout preview.

    pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen python docs/images/render_panel.py docs/images/slicer-panel-preview.png
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QVBoxLayout, QWidget

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "PPIRExtension" / "PPIR" / "Resources" / "UI" / "PPIR.ui"
STAND_INS = {"ctkCollapsibleButton": "QGroupBox", "ctkPathLineEdit": "QLineEdit", "ctkSliderWidget": "QDoubleSpinBox",
             "qMRMLNodeComboBox": "QComboBox", "qMRMLWidget": "QWidget"}
NODE_SELECTOR_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "noneEnabled", "addEnabled", "removeEnabled",
                            "renameEnabled", "noneDisplay"}
# What party 1 (FHE) sees: the rows it hides, and the choices the module fills in.
HIDDEN = {"fixedVolumeLabel", "fixedVolumeSelector", "fixedMaskLabel", "fixedMaskSelector", "dealerLabel",
          "dealerLineEdit", "disclosurePolicyLabel", "disclosurePolicyPathLineEdit", "startNoteLabel"}
CHOICES = {"roleComboBox": ["Party 1: moving-image owner"], "protocolComboBox": ["FHE"],
           "movingVolumeSelector": ["MRBrainTumor2"], "shareResultComboBox": ["transform"],
           "transformComboBox": ["affine"], "metricComboBox": ["ssd"], "samplingComboBox": ["urs"]}
TEXTS = {"addressLineEdit": "hospital-b.example.org:7000", "certificatesPathLineEdit": "~/Documents/ppir-identity",
         "levelsLineEdit": "4,2,1"}


def stand_in_ui(text: str) -> tuple[bytes, dict]:
    """The .ui with plain Qt classes, and each node selector's 'none' text."""
    root = ET.fromstring(text)
    none_texts = {}
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls == "qMRMLNodeComboBox":
            for prop in list(widget.findall("property")):
                if prop.get("name") == "noneDisplay":
                    none_texts[widget.get("name")] = prop.findtext("string")
                if prop.get("name") in NODE_SELECTOR_PROPERTIES:
                    widget.remove(prop)
        if cls == "ctkCollapsibleButton":
            for prop in list(widget.findall("property")):
                if prop.get("name") == "text":
                    prop.set("name", "title")
                elif prop.get("name") == "collapsed":
                    widget.remove(prop)
        if cls in STAND_INS:
            widget.set("class", STAND_INS[cls])
    for custom in root.findall("customwidgets"):
        root.remove(custom)
    for connections in root.findall("connections"):
        root.remove(connections)
    return ET.tostring(root), none_texts


def render(output: Path) -> None:
    app = QApplication.instance() or QApplication(sys.argv)
    data, none_texts = stand_in_ui(UI.read_text())
    buffer = QBuffer()
    buffer.setData(QByteArray(data))
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError("Qt could not load the stand-in .ui")
    presets = sorted((json.loads(p.read_text()) for p in (UI.parents[1] / "Presets").glob("*.json")),
                     key=lambda preset: preset["order"])
    choices = dict(CHOICES, presetComboBox=[presets[0]["title"]])
    for name, items in choices.items():
        panel.findChild(QComboBox, name).addItems(items)
    for name, text in none_texts.items():
        combo = panel.findChild(QComboBox, name)
        if combo.count() == 0:
            combo.addItem(text)
    for name, text in TEXTS.items():
        panel.findChild(QWidget, name).setText(text)
    panel.findChild(QLabel, "presetDescriptionLabel").setText(presets[0]["description"])
    for name in HIDDEN:
        panel.findChild(QWidget, name).setVisible(False)
    panel.findChild(QWidget, "sampleFractionSliderWidget").setValue(0.1)
    panel.findChild(QWidget, "bsplineSpacingSliderWidget").setValue(40.0)
    panel.findChild(QWidget, "maxIterationsSpinBox").setValue(50)
    panel.findChild(QWidget, "seedSpinBox").setValue(0)
    panel.findChild(QWidget, "useMovingTransformCheckBox").setChecked(True)   # the parameter's default
    panel.findChild(QWidget, "progressBar").setValue(0)
    frame = QWidget()
    layout = QVBoxLayout(frame)
    banner = QLabel("Layout preview of PPIR.ui (party 1, FHE), rendered with plain Qt widgets in place of "
                    "Slicer's and CTK's; not a screenshot of Slicer.")
    banner.setWordWrap(True)
    banner.setStyleSheet("background: #fff3c4; padding: 4px; border: 1px solid #c9a400;")
    layout.addWidget(banner)
    layout.addWidget(panel)
    frame.resize(460, 10)
    frame.adjustSize()
    frame.resize(460, frame.sizeHint().height())
    if not frame.grab().save(str(output)):
        raise OSError(f"could not write {output}")


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("slicer-panel-preview.png"))
