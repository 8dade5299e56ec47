// Webmail's only script of its own (the CSP allows no inline script): confirm before
// destructive buttons marked data-confirm.  Without JavaScript they simply act.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
});
