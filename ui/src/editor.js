// The config editor's glue over CodeMirror 6: a JSON editor with highlighting, folding,
// bracket matching and search (CodeMirror's basicSetup), JSON syntax errors as you type,
// and the config's violations (from /v1/config/validate) marked where their json_path
// points. Bundled by esbuild into api/ui/vendor/editor.js (scripts/build-ui.sh).

import { basicSetup, EditorView } from "codemirror";
import { json, jsonParseLinter } from "@codemirror/lang-json";
import { syntaxTree } from "@codemirror/language";
import { linter, lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorSelection } from "@codemirror/state";

// A node's children that carry values: skips punctuation ("{", ",", ":") and errors.
function children(node) {
  const out = [];
  for (let child = node.firstChild; child; child = child.nextSibling) {
    if (!["{", "}", "[", "]", ",", ":", "⚠"].includes(child.name)) out.push(child);
  }
  return out;
}

// The [from, to) of the value (or key) a json_path points at, or of its deepest existing
// ancestor: ["data_receiver", 0, "pollinterval"] marks that key's property.
export function locate(state, path) {
  const doc = state.doc;
  let node = syntaxTree(state).topNode.firstChild; // the document's value
  let found = node ? { from: node.from, to: node.to } : { from: 0, to: 0 };
  for (const step of path) {
    if (!node) break;
    let next = null;
    if (node.name === "Object" && typeof step === "string") {
      for (const property of children(node)) {
        const name = property.getChild("PropertyName");
        if (name && JSON.parse(doc.sliceString(name.from, name.to)) === step) {
          next = property;
          found = { from: property.from, to: property.to };
          break;
        }
      }
      node = next ? children(next).slice(-1)[0] : null; // the property's value
      if (node && node.name === "PropertyName") node = null;
    } else if (node.name === "Array" && typeof step === "number") {
      next = children(node)[step] || null;
      if (next) found = { from: next.from, to: next.to };
      node = next;
    } else {
      break;
    }
  }
  return found;
}

const shown = new WeakMap(); // view -> the violations to mark

function violationDiagnostics(view) {
  return (shown.get(view) || []).map((v) => {
    const { from, to } = locate(view.state, v.json_path || []);
    return { from, to, severity: v.level === "warning" ? "warning" : "error",
             message: `${(v.json_path || []).join("/") || "<root>"}: ${v.description}` };
  });
}

// Every mark: JSON syntax errors, then the violations at their json_path.
function diagnostics(view) {
  return [...jsonParseLinter()(view), ...violationDiagnostics(view)];
}

// Mark violations ({description, json_path, level}) in the editor: red for errors, yellow
// for warnings, each at its json_path (found again after every edit, with JSON syntax
// errors beside them). Returns the marks in document order.
// The marks are set at once: CodeMirror's forceLinting only hurries a lint already pending,
// so after a pause longer than the linter's delay it marked nothing.
export function showViolations(view, violations) {
  shown.set(view, violations);
  view.dispatch(setDiagnostics(view.state, diagnostics(view)));
  return violationDiagnostics(view).sort((a, b) => a.from - b.from);
}

// Put the cursor on a json_path's place and scroll it into view.
export function jumpTo(view, path) {
  const { from, to } = locate(view.state, path);
  view.dispatch({ selection: EditorSelection.single(from, to), scrollIntoView: true });
  view.focus();
}

// A JSON editor in `parent` holding `text`; `onChange` is called on every edit.
export function createEditor(parent, text, onChange) {
  return new EditorView({
    doc: text,
    parent,
    extensions: [
      basicSetup,
      EditorView.lineWrapping,
      json(),
      linter(diagnostics, { delay: 300 }),
      lintGutter(),
      EditorView.contentAttributes.of({ "aria-label": "Configuration (JSON)" }),
      EditorView.updateListener.of((update) => { if (update.docChanged && onChange) onChange(); }),
    ],
  });
}

export function getText(view) {
  return view.state.doc.toString();
}

export function setText(view, text) {
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
}
