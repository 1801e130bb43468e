#pragma once
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver, for a program that has its own main (compiler-rt's
// FuzzerDriver.cpp). SwiftPM links an executable target's main to a function
// of its own (<module>_main), so the fuzz target calls libFuzzer from there.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
