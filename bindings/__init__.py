"""Reproducible source builds of the native bindings (llama-cpp-python, pywhispercpp).

`python -m bindings.build --preset cuda-sm121` turns a configure preset of the root
`CMakePresets.json` into the CMAKE_ARGS of both source builds and writes wheels to a wheelhouse.
The versions are pinned once, in `.env.default`: LLAMA_CPP_REF and PYWHISPERCPP_REF.
"""
