# CUDA and C++ sources, shipped as package data and built just in time by fasttda._extension.
