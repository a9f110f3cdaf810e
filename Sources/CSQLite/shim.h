// Why: SQLite is wrapped as a system library (Debian's libsqlite3-dev) instead of pulling in GRDB:
// the store needs a handful of prepared statements, and GRDB doubles the clean build time.
#include <sqlite3.h>
// SQLITE_TRANSIENT is a function-pointer macro Swift cannot import.
static inline void (*clawpen_sqlite_transient(void))(void *) { return SQLITE_TRANSIENT; }
