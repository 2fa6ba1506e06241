// The parts of the agent's native addon; each adds its functions to the module's exports.
#ifndef SANDCELL_ADDON_H
#define SANDCELL_ADDON_H

#include <node_api.h>

// spawn(): process creation without fork (fast_spawn.c).
napi_status register_spawn(napi_env env, napi_value exports);

// xattrList/xattrGet/xattrSet/xattrRemove: user.* extended attributes (xattr.c).
napi_status register_xattr(napi_env env, napi_value exports);

#endif
