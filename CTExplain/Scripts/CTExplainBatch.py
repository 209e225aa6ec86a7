"""CTExplain in batch mode: Slicer without a window runs the module's logic on each input and
saves the output nodes.

    Slicer --no-main-window --python-script Scripts/CTExplainBatch.py -- INPUT... --out DIR
           [--model PKG] [--segmenter PKG|none] [--method cam|gradcam|gradcampp]
           [--device auto|cpu|cuda|mps] [--format nrrd|nii.gz]

Cases are found as by ``ctexplain explain`` (a volume file, a DICOM folder or a file in one, or a
folder of these). Volume files are loaded with slicer.util.loadVolume (Slicer's own reader, which
makes a left-handed grid right-handed); DICOM series through the core loader, as the command
line loads them. Each case is explained with ``CTExplainLogic().process(..., wait=True)`` and its
output nodes saved with slicer.util.saveNode into DIR/<case>/ under the command line's file names
(heatmap_<finding>.nrrd, labels.nrrd, segmentation.seg.nrrd, montage_<finding>.png,
result.json, report.html; summary.csv and summary.html for several cases); a case folder
appears complete or not at all. A failing case prints one ``error:`` line and the others
still run. Exit status: 0 if every case succeeded, else 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

EXIT_OK, EXIT_FAILED = 0, 1
LOG = logging.getLogger("CTExplainBatch")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    if argv and argv[0] == "--":  # Slicer may pass the separator on to the script
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="CTExplainBatch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="CT files or folders (NIfTI, NRRD, MHA, DICOM)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--model", default=None, help="classifier package (folder or name; default: the installed one whose domain fits each input)")
    parser.add_argument("--segmenter", default=None, help="segmenter package, or 'none'")
    parser.add_argument("--method", choices=("cam", "gradcam", "gradcampp"), default="gradcam")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--format", dest="image_format", choices=("nrrd", "nii.gz"), default="nrrd")
    return parser.parse_args(argv)


def save_case(results: Dict[str, Any], inputNode, case: Path, folder: Path, image_format: str) -> None:
    """The output nodes saved with slicer.util.saveNode, montages and result.json written by the core."""
    import slicer
    from CTExplain import volume_from_node
    from CTExplainLib.montage import finding_montage, legend_of
    from CTExplainLib.outputs.report import write_case_report
    from CTExplainLib.pipeline import slug
    from CTExplainLib.trust.faithfulness import caption as faithfulness_caption
    from CTExplainLib.writing import case_output_directory, write_json, write_png

    extension = "." + image_format

    def save(node, path: Path) -> None:
        if not slicer.util.saveNode(node, str(path)):  # saveNode logs and returns False, never raises
            raise RuntimeError(f"could not save {node.GetName()} as {path.name}")

    record = dict(results["record"])
    volume = volume_from_node(inputNode)
    labelMap = results["labelMap"]
    labels = slicer.util.arrayFromVolume(labelMap) if labelMap is not None else None
    with case_output_directory(folder) as staging:
        if labelMap is not None:
            save(labelMap, staging / f"labels{extension}")
            save(results["segmentation"], staging / "segmentation.seg.nrrd")
        findings = []
        for finding in record.get("findings", []):
            finding = dict(finding, heat_map=None)
            node = results["heatMaps"].get(finding["name"])
            if node is not None:
                finding["heat_map"] = f"heatmap_{slug(finding['name'])}{extension}"
                save(node, staging / finding["heat_map"])
                title = f"{finding['name']}  p={finding['probability']:.3f}  ({record.get('method')})"
                measured = finding.get("faithfulness")
                montage = finding_montage(volume, slicer.util.arrayFromVolume(node), labels, title, radiological=True,
                                          segments=legend_of(record.get("segments", [])),
                                          caption=faithfulness_caption(measured) if measured else None)
                finding["montage"] = f"montage_{slug(finding['name'])}.png"
                write_png(montage, staging / finding["montage"])
            findings.append(finding)
        record.update(input=str(case), findings=findings, input_grid=volume.grid.to_dict())
        write_json(record, staging / "result.json")
        write_case_report(record, staging, title=folder.name)


def run(argv: Sequence[str]) -> int:
    """Explain every case of ``argv``; the exit status (0: all succeeded, 1: any failed)."""
    import slicer

    args = parse_args(argv)
    # Scripts/ sits in the module folder beside CTExplain.py and CTExplainLib; a subfolder, so
    # that Slicer's module scanner does not take this script for a module.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if here not in sys.path:
        sys.path.insert(0, here)
    from CTExplainLib.dependencies import missing

    absent = missing()
    if absent:
        print("error: CTExplain needs Python packages that are not installed: "
              + ", ".join(r.name for r in absent) + ". Install them from the CTExplain module "
              "(Apply asks to install them) or with: PythonSlicer -m pip install "
              + " ".join(f'"{r.pip}"' for r in absent), file=sys.stderr)
        return EXIT_FAILED
    from CTExplain import CTExplainLogic
    from CTExplainLib.discovery import case_name, discover_cases, unique_case_folders
    from CTExplainLib.outputs.report import CaseEntry, cohort_summary

    cases, problems = discover_cases(args.inputs)
    failed = len(problems)
    for _, problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    folders = unique_case_folders(cases, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    logic = CTExplainLogic()
    scene = slicer.mrmlScene
    entries = [CaseEntry(str(path), None, problem) for path, problem in problems]
    for case in cases:
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            inputNode = logic.loadCT(case, case_name(case))
            results = logic.process(inputNode, classifier=args.model, segmenter=args.segmenter,
                                    method=args.method, device=args.device, wait=True)
            save_case(results, inputNode, case, folders[case], args.image_format)
            top = max(results["probabilities"].items(), key=lambda kv: kv[1]) if results["probabilities"] else ("-", 0.0)
            print(f"{case}: ok, top finding {top[0]} {top[1]:.3f} -> {folders[case]}")
            entries.append(CaseEntry(str(case), folders[case]))
        except Exception as exc:  # one case's failure must not stop the others
            LOG.debug("case %s failed", case, exc_info=True)
            print(f"error: {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
            entries.append(CaseEntry(str(case), None, f"{type(exc).__name__}: {exc}"))
            failed += 1
        finally:
            # Each case's nodes go again, so memory does not grow with the number of cases.
            added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for node in reversed([n for n in added if n.GetID() not in before]):
                if scene.IsNodePresent(node):
                    scene.RemoveNode(node)
    cohort_summary(args.out, entries)  # summary.csv/html, as the command line writes them
    return EXIT_OK if failed == 0 else EXIT_FAILED


def main(argv: Optional[List[str]] = None) -> None:
    """Run, then end Slicer with the status (without --testing Slicer would keep running)."""
    import slicer

    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: bad arguments (or --help, status 0)
        status = EXIT_OK if exc.code in (0, None) else EXIT_FAILED
    except Exception:
        LOG.exception("CTExplainBatch failed")
        status = EXIT_FAILED
    slicer.util.exit(status)


if __name__ == "__main__":
    main()
