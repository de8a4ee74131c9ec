// The Python entry point of sslext._C: importing it runs the static
// TORCH_LIBRARY registrations; the module itself carries nothing. Kept apart
// from register_ops.cpp so the CMake build links no Python.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
