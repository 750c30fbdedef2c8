"""Render the PDF manuals in knowledge/ from the text below (run once; the PDFs are committed).

Uses reportlab (PyPI). Each page carries a running header and page footer, which ingestion
must strip as boilerplate.
"""
import sys
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

DOCS = {
    "knowledge/manuals/hr/business-travel.en.pdf": ("Business Travel Policy", [
        ("Business Travel Policy", None),
        ("Approval", "All business trips need approval from your manager in the travel system before you book. Trips abroad also need approval from your department head at least two weeks before departure."),
        ("Booking transport and hotels", "Book flights, trains and hotels through the company travel agency portal so that costs are billed to the company directly. Economy class is the standard for flights under six hours; business class may be used for longer flights. Hotel costs are covered up to 12,000 yen per night in Tokyo and Osaka and 10,000 yen per night elsewhere in Japan."),
        ("Daily allowance", "A daily allowance of 2,000 yen is paid for trips with an overnight stay in Japan and 5,000 yen per day for trips abroad. The allowance covers meals and small expenses, for which no receipts are needed."),
        ("Travel insurance and safety", "Employees travelling abroad are covered by the company travel insurance. Download the insurance card from the HR portal before departure. Register your itinerary in the travel system so that the company can contact you in an emergency. Check the travel safety level of the destination; travel to countries with level 2 or higher warnings is not allowed."),
        ("Settling travel expenses", "Submit the travel expense report within two weeks after returning, with hotel receipts and boarding passes attached. Mileage for private cars used on business trips is reimbursed at 20 yen per kilometre."),
    ]),
    "knowledge/manuals/support/cloudledger-export.en.pdf": ("CloudLedger Data Export", [
        ("CloudLedger Data Export Guide", None),
        ("Export formats", "CloudLedger exports journals, invoices and customer lists as CSV or Excel files. Journals can also be exported in the format used by the national tax e-filing software."),
        ("Exporting journals", "Open Reports, then Journal export. Choose the period and the format and click Export. Large exports of more than 100,000 rows are prepared in the background; a download link is sent by e-mail when the file is ready, usually within 15 minutes."),
        ("Character encoding", "CSV files are encoded in UTF-8 with a byte order mark by default, so that Excel opens Japanese text correctly. Choose Shift_JIS in the export options if the customer's older accounting software needs it."),
        ("Scheduled exports", "Business and Enterprise plans can schedule a monthly export to a connected cloud storage folder. Scheduled exports run on the 1st day of each month at 03:00."),
        ("Deleting an account", "Before closing a CloudLedger account, customers should export all data. After the contract ends, data is kept for 90 days and then deleted permanently; it cannot be restored after deletion."),
    ]),
}

def render(path, title, sections):
    c = canvas.Canvas(path, pagesize=A4)
    width, height = A4
    page = 1
    y = height - 100
    def header_footer():
        c.setFont("Helvetica", 8)
        c.drawString(50, height - 40, "Hoshizora Systems Inc. - Internal")
        c.drawString(width / 2 - 20, 30, f"Page {page}")
    header_footer()
    for heading, body in sections:
        if y < 200:
            c.showPage(); page += 1; y = height - 100; header_footer()
        c.setFont("Helvetica-Bold", 14 if body is None else 12)
        c.drawString(50, y, heading); y -= 28
        if body:
            c.setFont("Helvetica", 10)
            line = ""
            for word in body.split():
                if c.stringWidth(line + " " + word, "Helvetica", 10) > width - 100:
                    c.drawString(50, y, line); y -= 14; line = word
                else:
                    line = (line + " " + word).strip()
            c.drawString(50, y, line); y -= 30
        if heading.startswith("Booking") or heading.startswith("Exporting"):
            c.showPage(); page += 1; y = height - 100; header_footer()
    c.save()

for path, (title, sections) in DOCS.items():
    render(path, title, sections)
    print("wrote", path)
