// The configuration loader on arbitrary text: YAML → the config proto → settings (DSNs, targets,
// mappings), then every mapping's module config parsed and its module built, as walshiftd does
// before it connects anywhere. Any input must end in settings or in a list of problems, never
// in a crash, a leak, an exception or undefined behaviour.
//
// Seeds (corpus/config): the example configurations and the malformed ones of the unit tests.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/config/config.h"
#include "transforms/registry.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Configs may name DSNs by environment variable; give the common ones a value so that
  // inputs get past DSN resolution.
  for (const char* name : {"WALSHIFT_SOURCE_DSN", "WALSHIFT_TARGET_DSN", "WALSHIFT_TARGET_DSN_AUTH",
                           "WALSHIFT_TARGET_DSN_CART", "WALSHIFT_TARGET_DSN_PRODUCT"}) {
    setenv(name, "host=127.0.0.1 dbname=fuzz", 0);
  }
  setenv("WALSHIFT_DOCUMENTS_DIR", "/nonexistent/walshift-fuzz", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto settings = walshift::config::LoadSettingsText(text, "fuzz.yaml");
  if (!settings.ok()) return 0;
  (void)walshift::transforms::BuildModules(*settings, "fuzz.yaml");
  return 0;
}
