// Prints, as JSON, the files `vercel deploy` would upload from a folder, as
// computed by the installed Vercel CLI's own code (its bundled @vercel/client
// buildFileTree: .vercelignore plus the CLI's defaults), so our checks use the
// CLI's semantics rather than a re-implementation.
//
//   node tests/vercel/upload_files.mjs <project dir>
//   -> {"cli": "64.0.2", "files": ["README.md", ...], "ignored": [".env", ...]}
//
// The CLI does not export this function; it lives in a hashed chunk that
// exports the client module, found here by its export list.

import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const cliDir = join(here, "node_modules", "vercel");
const chunks = join(cliDir, "dist", "chunks");

const chunk = readdirSync(chunks)
  .filter((name) => name.endsWith(".js"))
  .find((name) => {
    const text = readFileSync(join(chunks, name), "utf8");
    return text.includes("buildFileTree:()=>") && text.includes("getVercelIgnore:()=>");
  });
if (!chunk) {
  console.error("upload_files.mjs: no chunk of this Vercel CLI exports buildFileTree; update the lookup");
  process.exit(2);
}
const mod = await import(pathToFileURL(join(chunks, chunk)).href);
const requireClient = Object.values(mod).find((value) => {
  if (typeof value !== "function") return false;
  try {
    return typeof value().buildFileTree === "function";
  } catch {
    return false;
  }
});
if (!requireClient) {
  console.error(`upload_files.mjs: ${chunk} no longer exposes the client module`);
  process.exit(2);
}
const client = requireClient();

const root = resolve(process.argv[2] ?? ".");
const { fileList, ignoreList } = await client.buildFileTree(
  root,
  { isDirectory: true, prebuilt: false },
  () => {},
);
const toPosix = (p) => p.split(sep).join("/");
// The list also names folders whose every entry was ignored: no content, skip.
const files = fileList
  .filter((p) => !statSync(p).isDirectory())
  .map((p) => toPosix(relative(root, p)))
  .sort();
const version = JSON.parse(readFileSync(join(cliDir, "package.json"), "utf8")).version;
console.log(JSON.stringify({ cli: version, files, ignored: ignoreList.map(toPosix).sort() }));
