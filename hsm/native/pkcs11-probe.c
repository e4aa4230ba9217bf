/*
 * pkcs11-probe MODULE: C_Initialize a PKCS#11 module, list its slots and their tokens, C_Finalize,
 * then print "done". PKCS#11 errors are ignored (the caller's own calls report them); only a
 * module that ends or crashes this process leaves the line out. See hsm/module-probe.ts for why.
 * Built by scripts/setup.sh into build/pkcs11-probe (~15 ms a run against ~130 ms for a Node child).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <pkcs11/pkcs11.h>

int main (int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: pkcs11-probe MODULE_PATH\n");
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CK_C_GetFunctionList get_list = lib == NULL ? NULL : (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f = NULL;
  if (get_list != NULL && get_list(&f) == CKR_OK && f != NULL) {
    CK_C_INITIALIZE_ARGS args = { NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL };
    if (f->C_Initialize(&args) == CKR_OK) {
      CK_ULONG n = 0;
      if (f->C_GetSlotList(CK_TRUE, NULL, &n) == CKR_OK && n > 0) {
        CK_SLOT_ID *slots = calloc(n, sizeof *slots);
        if (slots != NULL && f->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK) {
          for (CK_ULONG i = 0; i < n; i++) {
            CK_TOKEN_INFO info;
            (void)f->C_GetTokenInfo(slots[i], &info);
          }
        }
        free(slots);
      }
      (void)f->C_Finalize(NULL);
    }
  }
  puts("done");
  return 0;
}
