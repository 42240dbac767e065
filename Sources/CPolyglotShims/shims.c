// The shims are static inline functions in the header; this file makes the target a C module.
#include "polyglot_shims.h"
