"""``slicer.testing`` (S:Base/Python/slicer/testing.py): how CTest runs a module's tests.

``runUnitTest([binDir, srcDir], 'CTExplain')`` loads the tests with
``unittest.TestLoader().loadTestsFromName``, so every ``test_*`` method runs as its own case with
``setUp`` (``runTest`` is not used) and any failure raises (section 5, "CTest registration").
"""
import sys
import unittest


def exitSuccess():
    pass


def exitFailure(message=""):
    raise Exception(message)


def runUnitTest(path, testname):
    if isinstance(path, str):
        sys.path.append(path)
    else:
        sys.path.extend(path)
    print("-------------------------------------------")
    print(f"path: {path}\ntestname: {testname}")
    print("-------------------------------------------")
    suite = unittest.TestLoader().loadTestsFromName(testname)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        exitFailure()
